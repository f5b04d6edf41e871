#!/usr/bin/env bash
# Deploys the sketch machine to Google Cloud and creates or updates everything it runs on: its two
# service accounts and their roles, the media bucket (linked to Firebase Storage), the Firestore
# rules, indexes and TTL policies, the Pub/Sub topics and push subscriptions of the steps, the two
# HTTP Cloud Functions (gen2), and the Cloud Scheduler job of the recovery sweep.
# Safe to run again: whatever exists is updated or left as it is, never created twice.
# Run ./deploy.sh --help for the flags.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ROOT

# The deployed functions: Cloud Functions name, Python entry point (= folder under functions/).
readonly WEBHOOK_FN="novita-webhook" WEBHOOK_ENTRY="novita_webhook"
readonly CREATE_FN="create-sketch" CREATE_ENTRY="create_sketch"
readonly RUNTIME="python312"
# Only used on the very first deploy of novita-webhook, whose URL is not known before it
# exists (see deploy_webhook). It must be a well-formed URL, or the function would not start.
readonly PLACEHOLDER_WEBHOOK_URL="https://novita-webhook.invalid/"
readonly RULES_API="https://firebaserules.googleapis.com/v1"
readonly FIREBASE_STORAGE_API="https://firebasestorage.googleapis.com/v1beta"
readonly INDEXES_FILE="firestore.indexes.json"
# The ids of the service accounts deploy.sh creates when none is given.
readonly RUNTIME_SA_ID="sketch-machine" BUILD_SA_ID="sketch-machine-build"
# The recovery sweep: every minute; a run takes at most shared/recovery.py's SWEEP_SECONDS (100 s).
readonly SCHEDULER_JOB="sketch-recovery-sweep" SWEEP_SCHEDULE="* * * * *" SWEEP_ATTEMPT_DEADLINE="180s"
# Documents that Firestore deletes once their `expires_at` has passed: the idempotency records
# (shared/idempotency.py) and the daily counters (shared/spending.py) of the `sketches` collection.
readonly TTL_FIELD="expires_at"
readonly -a TTL_COLLECTION_GROUPS=(sketches_idempotency sketches_daily)
# The shell assignments `python3 -m shared.topology shell` must print: the steps' Pub/Sub topology.
readonly -a TOPOLOGY=(STEPS_TOPIC DEAD_LETTER_TOPIC STEPS_SUBSCRIPTION DEAD_LETTER_SUBSCRIPTION STEP_ACTION
  DEAD_LETTER_ACTION ACK_DEADLINE_SECONDS FUNCTION_TIMEOUT_SECONDS MIN_RETRY_DELAY MAX_RETRY_DELAY
  MAX_DELIVERY_ATTEMPTS)

PROJECT="${GOOGLE_CLOUD_PROJECT:-}"
REGION="${REGION:-us-central1}"
AUTH_MODE="firebase"
CORS_ORIGINS=""
NOVITA_BASE_URL=""
T2I_MODEL=""
API_KEY_SECRET="novita-api-key"
WEBHOOK_SECRET_SECRET="webhook-secret"
RUNTIME_SA=""
BUILD_SA=""
BUCKET=""
MAX_INSTANCES="10"
CONCURRENCY="32"
DRY_RUN=0
SKIP_RULES=0
STAGE_ONLY=""
WORK=""

usage() {
  cat <<EOF
Usage: ./deploy.sh [options]

Deploys the sketch machine to one Google Cloud project, creating or updating (never
duplicating) everything it needs:
  - service accounts: one the functions run as, one Cloud Build builds them as, with their roles
  - the media bucket (uniform access, public access prevented), linked to Firebase Storage
  - Firestore: firestore.rules, the composite indexes of firestore.indexes.json, TTL policies
  - Pub/Sub: the steps topic and its dead-letter topic, and their push subscriptions
  - the gen2 HTTP Cloud Functions novita-webhook (first) and create-sketch
  - the Cloud Scheduler job that runs the recovery sweep every minute
Safe to run again. The Pub/Sub names and numbers come from shared/topology.py.

Options:
  --project ID              Google Cloud project (default: \$GOOGLE_CLOUD_PROJECT)
  --region R                region of the functions, the bucket and the job
                            (default: \$REGION, else us-central1)
  --auth-mode MODE          firebase (default): create-sketch requires a Firebase ID token
                            none: anyone may call create-sketch (demos only; warns loudly)
  --cors-origins LIST       comma-separated browser origins allowed to call create-sketch,
                            e.g. https://app.example.com,http://localhost:5173
                            (-> CORS_ALLOWED_ORIGINS; default empty: no browser origin with
                            --auth-mode firebase, any origin with --auth-mode none)
  --novita-base-url URL     -> NOVITA_BASE_URL (default in the code: https://api.novita.ai)
  --t2i-model NAME          -> NOVITA_T2I_MODEL (default in the code: seedream_3_0)
  --api-key-secret NAME     Secret Manager secret holding the Novita API key
                            (default: novita-api-key; -> NOVITA_API_KEY)
  --webhook-secret-secret NAME
                            Secret Manager secret holding the webhook token key
                            (default: webhook-secret; -> WEBHOOK_SECRET)
  --service-account EMAIL   service account both functions run as
                            (default: $RUNTIME_SA_ID@PROJECT.iam.gserviceaccount.com, created
                            if missing; it is granted the roles the functions need)
  --build-service-account EMAIL
                            service account Cloud Build builds the functions as
                            (default: $BUILD_SA_ID@PROJECT.iam.gserviceaccount.com, created
                            if missing; it is granted roles/run.builder)
  --bucket NAME             Cloud Storage bucket of the stills and videos (-> MEDIA_BUCKET;
                            default: PROJECT-sketch-media, created in the region if missing)
  --max-instances N         per function (default: 10)
  --concurrency N           requests per instance, and gunicorn threads (default: 32)
  --skip-rules              do not deploy firestore.rules
  --dry-run                 print every command (prefixed "+ ") and run none of them;
                            shown as on a first deploy; stages the sources into a temporary
                            folder only
  --stage-only DIR          only stage each function's source into DIR/create_sketch and
                            DIR/novita_webhook (main.py, shared/, requirements.txt,
                            .gcloudignore) and exit; needs no project and no gcloud
  -h, --help                show this help

Needs: gcloud, logged in with owner-like rights on the project (it creates service accounts
and grants roles); curl (Firebase Rules and Firebase Storage APIs); python3 (the repository's shared/topology.py
and shared/tokens.py, which need nothing beyond its standard library).
The two secrets must exist in Secret Manager; the script checks them and says how to create
them. The project must have Firebase added (the bucket is linked to Firebase Storage).
EOF
}

die() { printf 'deploy.sh: error: %s\n' "$*" >&2; exit 1; }
warn() { printf 'deploy.sh: warning: %s\n' "$*" >&2; }
say() { printf '%s\n' "$*"; }

# One argument as it would be typed into a shell.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command as it would be typed: "cmd args..." (SHOWN).
command_line() {
  local arg
  SHOWN=""
  for arg in "$@"; do SHOWN+="${SHOWN:+ }$(quote "$arg")"; done
}

# Print a command as "+ cmd args...".
show() {
  command_line "$@"
  printf '+ %s\n' "$SHOWN"
}

# Print a command, then run it unless this is a dry run.
run() {
  show "$@"
  if ((DRY_RUN)); then return 0; fi
  "$@"
}

need_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
}

parse_args() {
  local flag value
  while (($#)); do
    flag=$1
    value=""
    if [[ $flag == --*=* ]]; then
      value=${flag#*=}
      flag=${flag%%=*}
      set -- "$flag" "$value" "${@:2}"
    fi
    case $flag in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      --skip-rules) SKIP_RULES=1; shift; continue ;;
      --project | --region | --auth-mode | --novita-base-url | --t2i-model | --api-key-secret | \
        --webhook-secret-secret | --service-account | --build-service-account | --bucket | \
        --max-instances | --concurrency | --stage-only)
        need_value "$@"
        value=$2
        shift 2
        ;;
      --cors-origins)
        # May legitimately be empty (= no browser origin).
        [[ $# -ge 2 ]] || die "--cors-origins needs a value (see --help)"
        CORS_ORIGINS=$2
        shift 2
        continue
        ;;
      *) die "unknown argument: $flag (see --help)" ;;
    esac
    case $flag in
      --project) PROJECT=$value ;;
      --region) REGION=$value ;;
      --auth-mode) AUTH_MODE=$value ;;
      --novita-base-url) NOVITA_BASE_URL=$value ;;
      --t2i-model) T2I_MODEL=$value ;;
      --api-key-secret) API_KEY_SECRET=$value ;;
      --webhook-secret-secret) WEBHOOK_SECRET_SECRET=$value ;;
      --service-account) RUNTIME_SA=$value ;;
      --build-service-account) BUILD_SA=$value ;;
      --bucket) BUCKET=${value#gs://} ;;
      --max-instances) MAX_INSTANCES=$value ;;
      --concurrency) CONCURRENCY=$value ;;
      --stage-only) STAGE_ONLY=$value ;;
    esac
  done
}

validate_args() {
  [[ $AUTH_MODE == firebase || $AUTH_MODE == none ]] ||
    die "--auth-mode must be firebase or none, got '$AUTH_MODE'"
  [[ $REGION =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || die "--region '$REGION' is not a region name such as us-central1"
  [[ $MAX_INSTANCES =~ ^[1-9][0-9]*$ ]] || die "--max-instances must be a positive integer"
  [[ $CONCURRENCY =~ ^[1-9][0-9]*$ ]] || die "--concurrency must be a positive integer"
  local name
  for name in "$API_KEY_SECRET" "$WEBHOOK_SECRET_SECRET"; do
    [[ $name =~ ^[A-Za-z0-9_-]{1,255}$ ]] || die "secret name '$name' is not a valid Secret Manager name"
  done
  for name in "$RUNTIME_SA" "$BUILD_SA"; do
    [[ -z $name || $name =~ ^[a-z0-9-]+@[a-z0-9.-]+\.gserviceaccount\.com$ ]] ||
      die "'$name' is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)"
  done
  if [[ -n $NOVITA_BASE_URL && ! $NOVITA_BASE_URL =~ ^https?://[^/[:space:]]+ ]]; then
    die "--novita-base-url must be an http(s) URL, got '$NOVITA_BASE_URL'"
  fi
  [[ $T2I_MODEL =~ ^[A-Za-z0-9._-]*$ ]] || die "--t2i-model '$T2I_MODEL' has unexpected characters"
  # Normalise the origins ("a, b" -> "a,b"); an origin is scheme://host[:port], no path, and the
  # functions compare it exactly with the browser's Origin header.
  local origin normalised=""
  local -a origins=()
  IFS=',' read -r -a origins <<<"$CORS_ORIGINS"
  for origin in "${origins[@]}"; do
    origin=${origin//[[:space:]]/}
    [[ -n $origin ]] || continue
    if [[ $origin != "*" && ! $origin =~ ^https?://[A-Za-z0-9.-]+(:[0-9]+)?$ ]]; then
      die "--cors-origins: '$origin' is not an origin like https://app.example.com (no path, no trailing slash)"
    fi
    normalised+="${normalised:+,}$origin"
  done
  CORS_ORIGINS=$normalised
}

check_sources() {
  local file
  for file in functions/$CREATE_ENTRY/main.py functions/$WEBHOOK_ENTRY/main.py shared/__init__.py \
    requirements.txt .gcloudignore; do
    [[ -f $ROOT/$file ]] || die "source file missing: $ROOT/$file"
  done
  [[ -n $STAGE_ONLY ]] && return 0
  [[ -f $ROOT/$INDEXES_FILE ]] || die "source file missing: $ROOT/$INDEXES_FILE"
  if ! ((SKIP_RULES)); then
    [[ -f $ROOT/firestore.rules ]] || die "source file missing: $ROOT/firestore.rules (or pass --skip-rules)"
  fi
}

# Stage one function's deployable source: main.py, a real copy of shared/ (gcloud does not
# follow symlinked folders) without caches, the pinned requirements.txt and .gcloudignore.
stage_function() {
  local entry=$1 dest=$2/$1
  rm -rf -- "$dest"
  mkdir -p -- "$dest"
  cp -- "$ROOT/functions/$entry/main.py" "$dest/main.py"
  cp -RL -- "$ROOT/shared" "$dest/shared"
  find "$dest/shared" \( -name __pycache__ -o -name '*.py[cod]' \) -prune -exec rm -rf -- {} +
  cp -- "$ROOT/requirements.txt" "$dest/requirements.txt"
  cp -- "$ROOT/.gcloudignore" "$dest/.gcloudignore"
}

stage_all() {
  mkdir -p -- "$1"
  stage_function "$WEBHOOK_ENTRY" "$1"
  stage_function "$CREATE_ENTRY" "$1"
}

check_prerequisites() {
  [[ -n $PROJECT ]] ||
    die "no project: pass --project ID or set GOOGLE_CLOUD_PROJECT (e.g. GOOGLE_CLOUD_PROJECT=\$(gcloud config get-value project))"
  [[ $PROJECT =~ ^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "'$PROJECT' is not a project id"
  if ((DRY_RUN)); then
    command -v gcloud >/dev/null 2>&1 || warn "gcloud is not on PATH; a real run needs it"
  else
    command -v gcloud >/dev/null 2>&1 ||
      die "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
    command -v curl >/dev/null 2>&1 || die "curl not found on PATH (needed for the Firebase Rules and Firebase Storage APIs)"
  fi
  command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH (it reads shared/topology.py and derives the sweep token)"
}

# The service accounts and the bucket, from the flags or their defaults.
resolve_names() {
  # Service accounts of a domain-scoped project (example.com:name) live in name.example.com.
  local sa_domain="$PROJECT.iam.gserviceaccount.com"
  [[ $PROJECT != *:* ]] || sa_domain="${PROJECT#*:}.${PROJECT%%:*}.iam.gserviceaccount.com"
  SA_DOMAIN=$sa_domain
  RUNTIME_SA=${RUNTIME_SA:-$RUNTIME_SA_ID@$sa_domain}
  BUILD_SA=${BUILD_SA:-$BUILD_SA_ID@$sa_domain}
  BUCKET=${BUCKET:-$PROJECT-sketch-media}
  # The rule the functions apply to MEDIA_BUCKET (shared/config.py).
  [[ $BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] ||
    die "'$BUCKET' is not a Cloud Storage bucket name (lower-case letters, digits, - _ .); pass --bucket NAME"
}

# The steps' Pub/Sub topology, from the one module that defines it (the local stack builds the
# same from it). Each line must be a plain NAME=value before it is evaluated.
read_topology() {
  local topology line name
  topology="$(cd "$ROOT" && python3 -m shared.topology shell)" || die "python3 -m shared.topology shell failed (see above)"
  while IFS= read -r line; do
    [[ $line =~ ^[A-Z_]+=[A-Za-z0-9._-]+$ ]] || die "unexpected line from shared.topology: '$line'"
  done <<<"$topology"
  eval "$topology"
  for name in "${TOPOLOGY[@]}"; do
    [[ -n ${!name:-} ]] || die "shared.topology did not give $name"
  done
}

check_apis() {
  local -a needed=(cloudfunctions run cloudbuild artifactregistry secretmanager firestore pubsub cloudscheduler
    storage firebasestorage iam cloudresourcemanager)
  ((SKIP_RULES)) || needed+=(firebaserules)
  local -a cmd=(gcloud services list --enabled "--project=$PROJECT" "--format=value(config.name)")
  show "${cmd[@]}"
  ((DRY_RUN)) && return 0
  local enabled api
  local -a missing=()
  if ! enabled="$("${cmd[@]}")"; then
    warn "could not list the enabled APIs of $PROJECT; continuing (a missing API will fail its step)"
    return 0
  fi
  for api in "${needed[@]}"; do
    grep -qx "$api.googleapis.com" <<<"$enabled" || missing+=("$api.googleapis.com")
  done
  if ((${#missing[@]})); then
    die "APIs not enabled in $PROJECT: ${missing[*]}
  enable them with: gcloud services enable ${missing[*]} --project=$PROJECT"
  fi
}

check_firestore() {
  local -a cmd=(gcloud firestore databases describe "--database=(default)" "--project=$PROJECT" "--format=value(type)")
  show "${cmd[@]}"
  ((DRY_RUN)) && return 0
  local type
  type="$("${cmd[@]}")" || die "no Firestore database '(default)' in $PROJECT (see the message above); create one with:
  gcloud firestore databases create --database='(default)' --location=$REGION --type=firestore-native --project=$PROJECT"
  [[ $type == FIRESTORE_NATIVE ]] ||
    die "the Firestore database of $PROJECT is in mode '$type'; the sketch machine needs Firestore in Native mode"
}

check_secrets() {
  local name
  local -a missing=()
  for name in "$API_KEY_SECRET" "$WEBHOOK_SECRET_SECRET"; do
    local -a cmd=(gcloud secrets describe "$name" "--project=$PROJECT" "--format=value(name)")
    show "${cmd[@]}"
    ((DRY_RUN)) && continue
    "${cmd[@]}" >/dev/null || missing+=("$name")
  done
  ((${#missing[@]} == 0)) && return 0
  {
    printf 'deploy.sh: error: secret(s) not found in Secret Manager of %s: %s\n' "$PROJECT" "${missing[*]}"
    printf 'Create them (the value is read from stdin, so it never appears in a command line):\n'
    for name in "${missing[@]}"; do
      if [[ $name == "$API_KEY_SECRET" ]]; then
        # shellcheck disable=SC2016 # the $NOVITA_API_KEY is for the operator's shell, not this one
        printf '  read -rs NOVITA_API_KEY && printf %%s "$NOVITA_API_KEY" | gcloud secrets create %s --project=%s --replication-policy=automatic --data-file=-\n' "$name" "$PROJECT"
      else
        printf '  python3 -c "import secrets; print(secrets.token_urlsafe(48), end=\\"\\")" | gcloud secrets create %s --project=%s --replication-policy=automatic --data-file=-\n' "$name" "$PROJECT"
      fi
    done
    printf 'then run deploy.sh again: it lets %s read them (roles/secretmanager.secretAccessor).\n' "$RUNTIME_SA"
  } >&2
  exit 1
}

# The project number names the Pub/Sub service agent.
read_project_number() {
  local -a cmd=(gcloud projects describe "$PROJECT" "--format=value(projectNumber)")
  show "${cmd[@]}"
  if ((DRY_RUN)); then
    PROJECT_NUMBER="PROJECT_NUMBER"
  else
    PROJECT_NUMBER="$("${cmd[@]}")" || die "could not read the project number of $PROJECT"
    [[ $PROJECT_NUMBER =~ ^[0-9]+$ ]] || die "unexpected project number of $PROJECT: '$PROJECT_NUMBER'"
  fi
  PUBSUB_AGENT="service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# ------------------------------------------------------------------------- gcloud plumbing

# Whether gcloud's error text (in file $1) says that the resource does not exist. Anything else
# (no permission, no network, not logged in) proves nothing about it.
says_not_found() {
  local text absent='NOT_FOUND|[Nn]ot [Ff]ound|does not exist|status=\[404\]'
  local refused='PERMISSION_DENIED|[Pp]ermission|status=\[403\]|[Ff]orbidden'
  text=$(<"$1")
  [[ $text =~ $absent && ! $text =~ $refused ]]
}

# Runs a describe command: status 0 with its output in FOUND when the resource exists, status 1
# when gcloud says it does not. Any other failure stops the deploy, as creating or redeploying
# over a state that could not be read may break what is there. A dry run shows it as absent.
describe() {
  local what=$1
  shift
  show "$@"
  FOUND=""
  ((DRY_RUN)) && return 1
  if FOUND="$("$@" 2>"$WORK/describe.err")"; then
    return 0
  fi
  says_not_found "$WORK/describe.err" && return 1
  cat "$WORK/describe.err" >&2
  die "could not tell whether $what exists (gcloud's message is above); stopped before changing it"
}

# Adds an IAM binding; add-iam-policy-binding is idempotent (a binding already there stays as it
# is). IAM may not know yet a service account created moments ago ("... does not exist"): such a
# refusal is tried again for about a minute. The resulting policy is not printed.
bind() {
  show "$@"
  BINDINGS=$((BINDINGS + 1))
  ((DRY_RUN)) && return 0
  local attempt=1
  until "$@" >/dev/null 2>"$WORK/bind.err"; do
    if ((attempt >= 8)) || ! grep -q 'does not exist' "$WORK/bind.err"; then
      cat "$WORK/bind.err" >&2
      [[ "$*" != *@gcp-sa-pubsub.* ]] || warn "Pub/Sub's service agent is made when the API is enabled;" \
        "gcloud beta services identity create --service=pubsub.googleapis.com --project=$PROJECT makes it now"
      die "could not grant the role (gcloud's message is above)"
    fi
    say "IAM does not know the member yet; trying again in $((attempt * 2)) s"
    sleep $((attempt * 2))
    attempt=$((attempt + 1))
  done
}

# curl against a Google REST API; the access token is read from a private header file so that
# it never appears in a command line. Sets HTTP_STATUS; the body goes to $WORK/response.json.
api_call() {
  local method=$1 url=$2 body=${3:-}
  if [[ ! -f $WORK/auth-header ]] && ! ((DRY_RUN)); then
    show gcloud auth print-access-token
    local token
    token="$(gcloud auth print-access-token)" || die "gcloud auth print-access-token failed: run 'gcloud auth login'"
    (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$WORK/auth-header")
  elif ((DRY_RUN)) && [[ -z $SHOWN_TOKEN ]]; then
    show gcloud auth print-access-token
    SHOWN_TOKEN=1
  fi
  local -a cmd=(curl -sS --max-time 60 -o "$WORK/response.json" -w '%{http_code}' -X "$method"
    -H "@$WORK/auth-header" -H "Content-Type: application/json" -H "x-goog-user-project: $PROJECT")
  [[ -z $body ]] || cmd+=(--data-binary "@$body")
  cmd+=("$url")
  show "${cmd[@]}"
  if ((DRY_RUN)); then
    HTTP_STATUS=200
    return 0
  fi
  HTTP_STATUS="$("${cmd[@]}")" || die "$url could not be reached ($method)"
}

response() { cat "$WORK/response.json" 2>/dev/null || true; }

# ------------------------------------------------------------------------ service accounts

# Makes sure the service account exists. One in the project's own domain is created when it is
# missing; any other must exist already.
ensure_service_account() {
  local email=$1 title=$2
  if describe "service account $email" gcloud iam service-accounts describe "$email" "--project=$PROJECT" \
    "--format=value(email)"; then
    return 0
  fi
  local id=${email%@*}
  if [[ ${email#*@} != "$SA_DOMAIN" || ! $id =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
    ((DRY_RUN)) && return 0
    die "service account $email does not exist; create it, or leave out the flag to let deploy.sh create its own"
  fi
  run gcloud iam service-accounts create "$id" "--project=$PROJECT" "--display-name=$title"
  CREATED+=("service account $email")
}

# Runtime: Firestore (the project's only database; IAM has no finer grain for it), and below,
# per resource: the two secrets, publishing steps, the media bucket. Logs go to stdout, which
# needs no role. Build: roles/run.builder, Google's role for building source-deployed functions
# (logs, Artifact Registry, reading the uploaded source); since July 2024 new projects' default
# build account may lack it.
deploy_service_accounts() {
  say ""
  say "== Service accounts"
  ensure_service_account "$RUNTIME_SA" "Sketch machine functions"
  ensure_service_account "$BUILD_SA" "Sketch machine builds"
  bind gcloud projects add-iam-policy-binding "$PROJECT" "--member=serviceAccount:$RUNTIME_SA" \
    --role=roles/datastore.user --condition=None
  bind gcloud projects add-iam-policy-binding "$PROJECT" "--member=serviceAccount:$BUILD_SA" \
    --role=roles/run.builder --condition=None
  local name
  for name in "$API_KEY_SECRET" "$WEBHOOK_SECRET_SECRET"; do
    bind gcloud secrets add-iam-policy-binding "$name" "--project=$PROJECT" \
      "--member=serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor
  done
}

# -------------------------------------------------------------------------------- bucket

# The bucket of the durable stills and videos. Objects are never public: GET hands out Firebase
# download-token URLs, which need the bucket linked to Firebase Storage.
deploy_bucket() {
  say ""
  say "== Media bucket gs://$BUCKET"
  if ! describe "bucket gs://$BUCKET" gcloud storage buckets describe "gs://$BUCKET" "--project=$PROJECT" \
    "--format=value(name)"; then
    run gcloud storage buckets create "gs://$BUCKET" "--project=$PROJECT" "--location=$REGION" \
      --uniform-bucket-level-access --public-access-prevention
    CREATED+=("bucket gs://$BUCKET")
  fi
  bind gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" "--project=$PROJECT" \
    "--member=serviceAccount:$RUNTIME_SA" --role=roles/storage.objectUser
  local url="$FIREBASE_STORAGE_API/projects/$PROJECT/buckets/$BUCKET"
  api_call GET "$url"
  if [[ $HTTP_STATUS == 200 ]] && ! ((DRY_RUN)); then
    say "gs://$BUCKET is linked to Firebase Storage"
    return 0
  fi
  [[ $HTTP_STATUS == 404 ]] || ((DRY_RUN)) ||
    die "could not read the Firebase Storage link of gs://$BUCKET (HTTP $HTTP_STATUS): $(response)"
  printf '{}\n' >"$WORK/empty.json"
  api_call POST "$url:addFirebase" "$WORK/empty.json"
  case $HTTP_STATUS in
    200) CREATED+=("Firebase Storage link of gs://$BUCKET") ;;
    409) say "gs://$BUCKET is linked to Firebase Storage already" ;;
    *) die "linking gs://$BUCKET to Firebase Storage failed (HTTP $HTTP_STATUS): $(response)
  Has Firebase been added to $PROJECT? (https://console.firebase.google.com)" ;;
  esac
}

# ----------------------------------------------------------------------------- Firestore

# A JSON string literal of $1 (the rules file is plain text; other control characters refused).
json_string() {
  local s=$1
  if [[ $s =~ [[:cntrl:]] ]]; then
    local stripped=${s//[$'\n\t\r']/}
    [[ ! $stripped =~ [[:cntrl:]] ]] || die "firestore.rules contains control characters"
  fi
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

# gcloud alone has no command for Firestore security rules, so they are released through the
# Firebase Rules REST API, as `firebase deploy --only firestore:rules` does: create a ruleset
# from the file, then point the release `cloud.firestore` (the (default) database) at it,
# creating the release if the project has none yet. Each run creates a new ruleset.
deploy_rules() {
  say ""
  say "== Firestore security rules (firestore.rules)"
  local project_path="projects/$PROJECT" rules ruleset release="projects/$PROJECT/releases/cloud.firestore"
  rules=""
  IFS= read -r -d '' rules <"$ROOT/firestore.rules" || true # the whole file, final newline included
  local content
  content="$(json_string "$rules")"
  printf '{"source":{"files":[{"name":"firestore.rules","content":%s}]}}\n' "$content" >"$WORK/ruleset.json"
  api_call POST "$RULES_API/$project_path/rulesets" "$WORK/ruleset.json"
  [[ $HTTP_STATUS == 200 ]] || die "creating the ruleset failed (HTTP $HTTP_STATUS): $(response)"
  if ((DRY_RUN)); then
    ruleset="$project_path/rulesets/<new-ruleset-id>"
  else
    [[ $(<"$WORK/response.json") =~ \"name\"[[:space:]]*:[[:space:]]*\"($project_path/rulesets/[^\"]+)\" ]] ||
      die "unexpected answer when creating the ruleset: $(<"$WORK/response.json")"
    ruleset=${BASH_REMATCH[1]}
  fi
  printf '{"release":{"name":"%s","rulesetName":"%s"}}\n' "$release" "$ruleset" >"$WORK/release-patch.json"
  api_call PATCH "$RULES_API/$release" "$WORK/release-patch.json"
  if [[ $HTTP_STATUS == 404 ]]; then
    say "the project has no Firestore rules release yet: creating it"
    printf '{"name":"%s","rulesetName":"%s"}\n' "$release" "$ruleset" >"$WORK/release-create.json"
    api_call POST "$RULES_API/$project_path/releases" "$WORK/release-create.json"
  fi
  [[ $HTTP_STATUS == 200 ]] || die "releasing the ruleset failed (HTTP $HTTP_STATUS): $(response)"
  UPDATED+=("Firestore rules ($ruleset)")
}

# The composite indexes of firestore.indexes.json (the Firebase CLI's format) that the project
# lacks, one a line: collection group, query scope, then gcloud's --field-config values, tab
# separated. Firestore ends every index with __name__ in the direction of its last field and
# lists it so; a file entry without it means the same index.
missing_indexes() {
  python3 - "$ROOT/$INDEXES_FILE" "$WORK/indexes.json" <<'PY'
import json
import re
import sys

SCOPES = {"COLLECTION": "collection", "COLLECTION_GROUP": "collection-group"}
PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def fields(index, with_name):
    out = []
    for field in index["fields"]:
        path = field["fieldPath"]
        if not PATH.fullmatch(path):
            sys.exit(f"unexpected field path {path!r}")
        if "order" in field:
            out.append((path, "order", field["order"]))
        else:
            out.append((path, "array-config", field["arrayConfig"]))
    if with_name and out[-1][0] != "__name__":
        out.append(("__name__", "order", out[-1][2] if out[-1][1] == "order" else "ASCENDING"))
    return tuple(out)


with open(sys.argv[1]) as file:
    wanted = json.load(file)["indexes"]
with open(sys.argv[2]) as file:
    listed = json.load(file)
present = {
    (index["name"].split("/collectionGroups/")[1].split("/")[0], index["queryScope"], fields(index, True))
    for index in listed
}
for index in wanted:
    group, scope = index["collectionGroup"], index["queryScope"]
    if not PATH.fullmatch(group) or scope not in SCOPES:
        sys.exit(f"unexpected index {index!r}")
    if (group, scope, fields(index, True)) in present:
        continue
    configs = [f"field-path={path},{kind}={value.lower()}" for path, kind, value in fields(index, False)]
    print("\t".join([group, SCOPES[scope], *configs]))
PY
}

# Creating an index that exists fails (409), so only the missing ones are created. They build in
# the background (minutes); until then the query that needs one answers FAILED_PRECONDITION.
deploy_indexes() {
  say ""
  say "== Firestore composite indexes ($INDEXES_FILE)"
  local -a list=(gcloud firestore indexes composite list "--project=$PROJECT" --format=json)
  show "${list[@]}"
  if ((DRY_RUN)); then
    printf '[]\n' >"$WORK/indexes.json"
  else
    "${list[@]}" >"$WORK/indexes.json" || die "could not list the composite indexes of $PROJECT"
  fi
  local missing line config
  local -a parts
  missing="$(missing_indexes)" || die "could not read $INDEXES_FILE (see above)"
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    IFS=$'\t' read -r -a parts <<<"$line"
    local -a cmd=(gcloud firestore indexes composite create "--project=$PROJECT" "--collection-group=${parts[0]}"
      "--query-scope=${parts[1]}")
    for config in "${parts[@]:2}"; do cmd+=("--field-config=$config"); done
    run "${cmd[@]}" --async
    CREATED+=("Firestore index ${parts[0]} (${parts[*]:2})")
    NEW_INDEXES=$((NEW_INDEXES + 1))
  done <<<"$missing"
  [[ -n $missing ]] || say "every index of $INDEXES_FILE exists"
}

# TTL policies: Firestore deletes a document some time (typically within a day) after its
# expires_at; the code never counts on the deletion, only on the space it frees.
deploy_ttls() {
  say ""
  say "== Firestore TTL policies ($TTL_FIELD)"
  local -a list=(gcloud firestore fields ttls list "--project=$PROJECT" "--format=value(name)")
  local enabled="" group
  show "${list[@]}"
  if ! ((DRY_RUN)); then
    enabled="$("${list[@]}")" || die "could not list the TTL policies of $PROJECT"
  fi
  for group in "${TTL_COLLECTION_GROUPS[@]}"; do
    if grep -q "/collectionGroups/$group/fields/$TTL_FIELD\$" <<<"$enabled"; then
      say "$group.$TTL_FIELD is a TTL field already"
      continue
    fi
    run gcloud firestore fields ttls update "$TTL_FIELD" "--collection-group=$group" --enable-ttl --async \
      "--project=$PROJECT"
    CREATED+=("TTL policy on $group.$TTL_FIELD")
  done
}

# ------------------------------------------------------------------------------- Pub/Sub

ensure_topic() {
  local topic=$1
  describe "topic $topic" gcloud pubsub topics describe "$topic" "--project=$PROJECT" "--format=value(name)" &&
    return 0
  run gcloud pubsub topics create "$topic" "--project=$PROJECT"
  CREATED+=("Pub/Sub topic $topic")
}

# The topics, before the functions that publish to them. Pub/Sub itself (its service agent)
# publishes the steps that failed too often to the dead-letter topic.
deploy_topics() {
  say ""
  say "== Pub/Sub topics"
  ensure_topic "$STEPS_TOPIC"
  ensure_topic "$DEAD_LETTER_TOPIC"
  bind gcloud pubsub topics add-iam-policy-binding "$STEPS_TOPIC" "--project=$PROJECT" \
    "--member=serviceAccount:$RUNTIME_SA" --role=roles/pubsub.publisher
  bind gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" "--project=$PROJECT" \
    "--member=serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.publisher
}

# Creates the push subscription, or updates it with every setting: gcloud resets the push,
# retry or dead-letter settings left out of an update to their defaults.
ensure_subscription() {
  local name=$1 topic=$2
  shift 2
  if describe "subscription $name" gcloud pubsub subscriptions describe "$name" "--project=$PROJECT" \
    "--format=value(topic)"; then
    [[ $FOUND == "projects/$PROJECT/topics/$topic" ]] ||
      die "subscription $name is attached to '$FOUND', not to topic $topic; delete it
  (gcloud pubsub subscriptions delete $name --project=$PROJECT) and run deploy.sh again"
    run gcloud pubsub subscriptions update "$name" "--project=$PROJECT" "$@"
    UPDATED+=("Pub/Sub subscription $name")
  else
    run gcloud pubsub subscriptions create "$name" "--project=$PROJECT" "--topic=$topic" "$@"
    CREATED+=("Pub/Sub subscription $name")
  fi
}

# The push subscriptions call novita-webhook, so they come after it, and before create-sketch
# (a step published to a topic without a subscription is lost). The dead-letter one comes first
# for the same reason. No OIDC token: the function is public, and every push is authenticated by
# the signature each step message carries (shared/topology.py), which the function checks.
# Pub/Sub's service agent must be able to take a message off the steps subscription to dead-letter
# it; without that grant (and the publisher one above) dead-lettering silently never happens.
deploy_subscriptions() {
  say ""
  say "== Pub/Sub push subscriptions"
  ensure_subscription "$DEAD_LETTER_SUBSCRIPTION" "$DEAD_LETTER_TOPIC" \
    "--push-endpoint=$WEBHOOK_URL?action=$DEAD_LETTER_ACTION" "--ack-deadline=$ACK_DEADLINE_SECONDS" \
    "--min-retry-delay=$MIN_RETRY_DELAY" "--max-retry-delay=$MAX_RETRY_DELAY" --expiration-period=never
  ensure_subscription "$STEPS_SUBSCRIPTION" "$STEPS_TOPIC" \
    "--push-endpoint=$WEBHOOK_URL?action=$STEP_ACTION" "--ack-deadline=$ACK_DEADLINE_SECONDS" \
    "--min-retry-delay=$MIN_RETRY_DELAY" "--max-retry-delay=$MAX_RETRY_DELAY" \
    "--dead-letter-topic=$DEAD_LETTER_TOPIC" "--max-delivery-attempts=$MAX_DELIVERY_ATTEMPTS" \
    --expiration-period=never
  bind gcloud pubsub subscriptions add-iam-policy-binding "$STEPS_SUBSCRIPTION" "--project=$PROJECT" \
    "--member=serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.subscriber
}

# ------------------------------------------------------------------------------ functions

# The environment of both functions, in gcloud's alternate-delimiter form "^;^K=V;K=V" so that
# values may contain commas (CORS_ALLOWED_ORIGINS). --set-env-vars replaces all variables, so
# what is deployed is exactly this list, whatever was set before.
env_vars() {
  local webhook_url=$1
  local -a vars=(
    "GOOGLE_CLOUD_PROJECT=$PROJECT"
    "WEBHOOK_URL=$webhook_url"
    "AUTH_MODE=$AUTH_MODE"
    "MEDIA_URL_POLICY=public-https"
    "MEDIA_BUCKET=$BUCKET"
    # functions-framework serves with gunicorn threads; one per concurrent request.
    "THREADS=$CONCURRENCY"
  )
  [[ -z $CORS_ORIGINS ]] || vars+=("CORS_ALLOWED_ORIGINS=$CORS_ORIGINS")
  [[ -z $NOVITA_BASE_URL ]] || vars+=("NOVITA_BASE_URL=$NOVITA_BASE_URL")
  [[ -z $T2I_MODEL ]] || vars+=("NOVITA_T2I_MODEL=$T2I_MODEL")
  local joined="" var
  for var in "${vars[@]}"; do
    [[ $var != *";"* ]] || die "a setting may not contain ';': $var"
    joined+=";$var"
  done
  printf '^;^%s' "${joined#;}"
}

# Memory: the webhook holds each still it chains (up to 10 MiB) while it uploads it, so 32 chains
# at once may hold 320 MiB on top of the ~80 MiB an idle instance uses.
deploy_function() {
  local name=$1 entry=$2 timeout=$3 memory=$4 webhook_url=$5
  run gcloud functions deploy "$name" --gen2 "--runtime=$RUNTIME" "--region=$REGION" \
    "--project=$PROJECT" "--source=$WORK/$entry" "--entry-point=$entry" --trigger-http \
    --allow-unauthenticated "--memory=$memory" --cpu=1 "--timeout=$timeout" \
    "--concurrency=$CONCURRENCY" "--max-instances=$MAX_INSTANCES" \
    "--service-account=$RUNTIME_SA" "--build-service-account=projects/$PROJECT/serviceAccounts/$BUILD_SA" \
    "--set-env-vars=$(env_vars "$webhook_url")" \
    "--set-secrets=NOVITA_API_KEY=$API_KEY_SECRET:latest,WEBHOOK_SECRET=$WEBHOOK_SECRET_SECRET:latest"
  DEPLOYED+=("$name")
}

# Sets FN_URL to the https URL of a deployed function; status 1 when gcloud says it does not
# exist, or when it exists without a URL (a first deploy that failed: it serves nothing). Any
# other failure to describe it stops the deploy (see describe). A dry run pretends that only
# what it has "deployed" so far exists.
function_url() {
  local name=$1
  local -a cmd=(gcloud functions describe "$name" --gen2 "--region=$REGION" "--project=$PROJECT"
    "--format=value(serviceConfig.uri)")
  FN_URL=""
  if ((DRY_RUN)); then
    show "${cmd[@]}"
    [[ " ${DEPLOYED[*]} " == *" $name "* ]] || return 1
    FN_URL="<$name-url>"
    return 0
  fi
  describe "function $name" "${cmd[@]}" || return 1
  FN_URL=$FOUND
  [[ $FN_URL == https://* ]]
}

# novita-webhook needs its own public URL in WEBHOOK_URL (it registers it with Novita for the
# video stage), but a gen2 function's URL exists only once the function does. So:
#   - if the function already exists, its URL is read first and it is deployed once with it;
#   - on the very first deploy it is deployed with a placeholder URL, its URL is read back and
#     it is deployed again with the real one. No sketch can exist in between (create-sketch is
#     deployed after), so the placeholder is never handed to Novita.
# Only gcloud's "not found" means a first deploy: were a live webhook redeployed with the
# placeholder because it could not be described, every sketch in flight would lose its webhook.
# A full `gcloud functions deploy` (not `gcloud run services update`) keeps the function's own
# configuration the single source of truth: a later deploy would otherwise undo a change made
# on the Cloud Run service underneath. The URL of a function never changes while it exists, so
# every later run is a single deploy of it. The timeout lies between a step's own deadline and
# the subscription's ack deadline (shared/topology.py): a step is never pushed again while it runs.
deploy_webhook() {
  say ""
  say "== $WEBHOOK_FN (entry point $WEBHOOK_ENTRY)"
  local known="" timeout="${FUNCTION_TIMEOUT_SECONDS}s"
  if ((DRY_RUN)); then
    say "# dry run: shown as on a first deploy; when $WEBHOOK_FN exists already, it is deployed once, with its URL"
  fi
  if function_url "$WEBHOOK_FN"; then
    known=$FN_URL
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" "$timeout" 1Gi "$known"
  else
    say "$WEBHOOK_FN does not exist yet (or has no URL): first deploy with a placeholder WEBHOOK_URL"
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" "$timeout" 1Gi "$PLACEHOLDER_WEBHOOK_URL"
  fi
  function_url "$WEBHOOK_FN" || die "could not read the URL of $WEBHOOK_FN after deploying it"
  if [[ $FN_URL != "$known" ]]; then
    say "$WEBHOOK_FN is at $FN_URL: deploying it again with WEBHOOK_URL=$FN_URL"
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" "$timeout" 1Gi "$FN_URL"
  fi
  WEBHOOK_URL=$FN_URL
}

deploy_create() {
  say ""
  say "== $CREATE_FN (entry point $CREATE_ENTRY)"
  deploy_function "$CREATE_FN" "$CREATE_ENTRY" 60s 512Mi "$WEBHOOK_URL"
  function_url "$CREATE_FN" || die "could not read the URL of $CREATE_FN after deploying it"
  CREATE_URL=$FN_URL
}

# ---------------------------------------------------------------------------- the sweep

# Writes the job's Authorization header into a private gcloud flags file ($1: headers on create,
# update-headers on update), so that the sweep token appears on no command line and in no output.
# The token is derived from the webhook secret (shared/tokens.py), read from Secret Manager.
write_sweep_flags() {
  local flag=$1 token
  local -a access=(gcloud secrets versions access latest "--secret=$WEBHOOK_SECRET_SECRET" "--project=$PROJECT")
  command_line "${access[@]}"
  say "+ $SHOWN | python3 -m shared.tokens sweep-token"
  say "#   -> $WORK/sweep-flags.json (a gcloud flags file): --$flag=Authorization=Bearer <sweep token>"
  ((DRY_RUN)) && return 0
  # The module reads the secret from stdin first, so a WEBHOOK_SECRET in the operator's shell is not used.
  token="$("${access[@]}" | (cd "$ROOT" && python3 -m shared.tokens sweep-token))" ||
    die "could not derive the sweep token from the secret $WEBHOOK_SECRET_SECRET (see above)"
  [[ $token =~ ^[A-Za-z0-9_-]{40,}$ ]] || die "the sweep token derived from $WEBHOOK_SECRET_SECRET has an unexpected form"
  (umask 077 && printf '{"--%s": "Authorization=Bearer %s"}\n' "$flag" "$token" >"$WORK/sweep-flags.json")
}

# Every minute: POST novita-webhook?action=sweep with the sweep token. --format=none: gcloud
# would print the job, header included. Rotating the webhook secret needs a run of deploy.sh.
deploy_scheduler() {
  say ""
  say "== Recovery sweep: Cloud Scheduler job $SCHEDULER_JOB"
  local -a settings=("--project=$PROJECT" "--location=$REGION" "--schedule=$SWEEP_SCHEDULE" --time-zone=Etc/UTC
    "--uri=$WEBHOOK_URL?action=sweep" --http-method=post "--attempt-deadline=$SWEEP_ATTEMPT_DEADLINE"
    "--flags-file=$WORK/sweep-flags.json" --format=none)
  if describe "Cloud Scheduler job $SCHEDULER_JOB" gcloud scheduler jobs describe "$SCHEDULER_JOB" \
    "--project=$PROJECT" "--location=$REGION" "--format=value(name)"; then
    write_sweep_flags update-headers
    run gcloud scheduler jobs update http "$SCHEDULER_JOB" "${settings[@]}"
    UPDATED+=("Cloud Scheduler job $SCHEDULER_JOB")
  else
    write_sweep_flags headers
    run gcloud scheduler jobs create http "$SCHEDULER_JOB" "${settings[@]}"
    CREATED+=("Cloud Scheduler job $SCHEDULER_JOB")
  fi
}

# ------------------------------------------------------------------------------ main

announce_mode() {
  say "Project: $PROJECT   Region: $REGION   Runtime: $RUNTIME"
  say "Auth mode: AUTH_MODE=$AUTH_MODE"
  if [[ $AUTH_MODE == none ]]; then
    {
      printf '\n'
      printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
      printf '!! WARNING: --auth-mode none: create-sketch will accept requests from ANYONE\n'
      printf '!! on the internet, without a login. Every call spends Novita credit on your\n'
      printf '!! account. Use it only for a short demo; redeploy with --auth-mode firebase.\n'
      printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
    } >&2
  else
    say "  create-sketch requires 'Authorization: Bearer <Firebase ID token>' of project $PROJECT"
  fi
  if [[ -n $CORS_ORIGINS ]]; then
    say "CORS allowed origins: $CORS_ORIGINS"
  elif [[ $AUTH_MODE == none ]]; then
    say "CORS allowed origins: * (none given; with AUTH_MODE=none any origin is allowed)"
  else
    say "CORS allowed origins: (none: no browser origin may call create-sketch; pass --cors-origins)"
  fi
  say "Secrets: NOVITA_API_KEY=$API_KEY_SECRET:latest, WEBHOOK_SECRET=$WEBHOOK_SECRET_SECRET:latest"
  say "Runs as: $RUNTIME_SA   Builds as: $BUILD_SA"
  say "Media bucket: gs://$BUCKET"
  say "Steps: $STEPS_TOPIC -> $STEPS_SUBSCRIPTION (ack deadline ${ACK_DEADLINE_SECONDS}s, retry" \
    "$MIN_RETRY_DELAY..$MAX_RETRY_DELAY, $MAX_DELIVERY_ATTEMPTS deliveries) -> $DEAD_LETTER_TOPIC -> $DEAD_LETTER_SUBSCRIPTION"
  if ((DRY_RUN)); then
    say "DRY RUN: printing the commands; none of them is run."
  fi
}

summary() {
  local title="Deployed" created="Created" updated="Updated" item
  if ((DRY_RUN)); then
    title="Dry run finished: nothing was changed"
    created="Would create (on a first deploy)"
    updated="Would update"
  fi
  say ""
  say "== $title"
  say "$created:"
  for item in "${CREATED[@]}"; do say "  - $item"; done
  ((${#CREATED[@]})) || say "  (nothing: everything existed)"
  say "$updated:"
  for item in "${UPDATED[@]}"; do say "  - $item"; done
  say "Functions deployed: ${DEPLOYED[*]}"
  say "IAM role bindings added or already there: $BINDINGS"
  cat <<EOF

novita-webhook: $WEBHOOK_URL
create-sketch:  $CREATE_URL
Auth mode:      AUTH_MODE=$AUTH_MODE
CORS origins:   ${CORS_ORIGINS:-(none)}
Media bucket:   gs://$BUCKET
Recovery sweep: every minute ($SCHEDULER_JOB, $REGION)

Novita: nothing to set up. Each request registers its own webhook URL
  ($WEBHOOK_URL?sketch=...&stage=...&token=...); the API key is the secret $API_KEY_SECRET.

Frontend: call $CREATE_URL
  POST with the JSON sketch request to start one; GET ?id=<sketch id> to read it back;
  GET without id (limit, page_token) for the sketches, newest first (with --auth-mode firebase,
  the caller's own).
EOF
  if [[ $AUTH_MODE == firebase ]]; then
    say "  Send 'Authorization: Bearer <Firebase ID token>' (user.getIdToken()) of Firebase project $PROJECT,"
    say "  and serve the frontend from an origin listed in --cors-origins."
    say "  A Firebase client SDK may also read the user's own sketches directly (firestore.rules):"
    say "  where('user_id', '==', uid), orderBy('created_at', 'desc'), limit(50 or fewer)."
  fi
  ((NEW_INDEXES == 0)) || cat <<EOF
  The new Firestore index builds for a few minutes; until it is READY, GET without id answers an
  error (gcloud firestore indexes composite list --project=$PROJECT shows its state).
EOF
}

main() {
  parse_args "$@"
  validate_args
  check_sources
  if [[ -n $STAGE_ONLY ]]; then
    stage_all "$STAGE_ONLY"
    say "staged $STAGE_ONLY/$WEBHOOK_ENTRY and $STAGE_ONLY/$CREATE_ENTRY"
    return 0
  fi
  check_prerequisites
  resolve_names
  read_topology
  announce_mode
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/sketch-deploy.XXXXXX")"
  trap 'rm -rf -- "$WORK"' EXIT
  say ""
  say "== Checks"
  check_apis
  check_firestore
  check_secrets
  read_project_number
  stage_all "$WORK"
  say "staged the sources in $WORK (removed on exit)"
  deploy_service_accounts
  deploy_bucket
  ((SKIP_RULES)) || deploy_rules
  deploy_indexes
  deploy_ttls
  deploy_topics
  deploy_webhook
  deploy_subscriptions
  deploy_create
  deploy_scheduler
  summary
}

WEBHOOK_URL=""
CREATE_URL=""
FN_URL=""
FOUND=""
SHOWN=""
SHOWN_TOKEN=""
HTTP_STATUS=""
SA_DOMAIN=""
PROJECT_NUMBER=""
PUBSUB_AGENT=""
# Set by read_topology.
STEPS_TOPIC="" DEAD_LETTER_TOPIC="" STEPS_SUBSCRIPTION="" DEAD_LETTER_SUBSCRIPTION="" STEP_ACTION=""
DEAD_LETTER_ACTION="" ACK_DEADLINE_SECONDS="" FUNCTION_TIMEOUT_SECONDS="" MIN_RETRY_DELAY=""
MAX_RETRY_DELAY="" MAX_DELIVERY_ATTEMPTS=""
BINDINGS=0
NEW_INDEXES=0
DEPLOYED=()
CREATED=()
UPDATED=()
main "$@"
