#!/usr/bin/env bash
# Deploys the sketch machine to Google Cloud: the Firestore security rules and the two HTTP
# Cloud Functions (gen2), novita-webhook first, then create-sketch. Safe to run again: every
# step is a create-or-update. Run ./deploy.sh --help for the flags.
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
readonly SCHEDULER_JOB="sketch-recovery-sweep"

PROJECT="${GOOGLE_CLOUD_PROJECT:-}"
REGION="${REGION:-us-central1}"
AUTH_MODE="firebase"
CORS_ORIGINS=""
NOVITA_BASE_URL=""
T2I_MODEL=""
API_KEY_SECRET="novita-api-key"
WEBHOOK_SECRET_SECRET="webhook-secret"
SERVICE_ACCOUNT=""
MAX_INSTANCES="10"
CONCURRENCY="32"
DRY_RUN=0
SKIP_RULES=0
STAGE_ONLY=""
WORK=""

usage() {
  cat <<EOF
Usage: ./deploy.sh [options]

Deploys the sketch machine to Google Cloud: firestore.rules (Firebase Rules API), then the
gen2 HTTP Cloud Functions novita-webhook (first) and create-sketch. Safe to run again.

Options:
  --project ID              Google Cloud project (default: \$GOOGLE_CLOUD_PROJECT)
  --region R                region of both functions (default: \$REGION, else us-central1)
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
  --service-account EMAIL   runtime service account of both functions
                            (default: the project's default compute service account)
  --max-instances N         per function (default: 10)
  --concurrency N           requests per instance, and gunicorn threads (default: 32)
  --skip-rules              do not deploy firestore.rules
  --dry-run                 print every command (prefixed "+ ") and run none of them;
                            stages the sources into a temporary folder only
  --stage-only DIR          only stage each function's source into DIR/create_sketch and
                            DIR/novita_webhook (main.py, shared/, requirements.txt,
                            .gcloudignore) and exit; needs no project and no gcloud
  -h, --help                show this help

Needs: gcloud (logged in, with rights to deploy functions, read secrets' metadata and
release rules) and curl (for the rules). The secrets must exist in Secret Manager; the
script checks them and says how to create them.
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

# Print a command as "+ cmd args...".
show() {
  local line="+" arg
  for arg in "$@"; do line+=" $(quote "$arg")"; done
  printf '%s\n' "$line"
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
        --webhook-secret-secret | --service-account | --max-instances | --concurrency | --stage-only)
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
      --service-account) SERVICE_ACCOUNT=$value ;;
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
  if ! ((SKIP_RULES)) && [[ -z $STAGE_ONLY ]]; then
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
    return 0
  fi
  command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
  if ! ((SKIP_RULES)); then
    command -v curl >/dev/null 2>&1 || die "curl not found on PATH (needed to release firestore.rules; or pass --skip-rules)"
  fi
}

check_apis() {
  local -a needed=(cloudfunctions run cloudbuild artifactregistry secretmanager firestore)
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
  grep -qx "cloudscheduler.googleapis.com" <<<"$enabled" ||
    warn "cloudscheduler.googleapis.com is not enabled; the recovery sweep job (printed at the end) needs it"
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
    printf 'and let the functions'"'"' runtime service account read them:\n'
    for name in "${missing[@]}"; do
      printf '  gcloud secrets add-iam-policy-binding %s --project=%s --member=serviceAccount:%s --role=roles/secretmanager.secretAccessor\n' \
        "$name" "$PROJECT" "${SERVICE_ACCOUNT:-PROJECT_NUMBER-compute@developer.gserviceaccount.com}"
    done
  } >&2
  exit 1
}

# ---------------------------------------------------------------------------------- rules

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

# curl against the Firebase Rules API; the access token is read from a private header file so
# it never appears in a command line. Sets HTTP_STATUS; the body goes to $WORK/response.json.
rules_api() {
  local method=$1 url=$2 body=$3
  local -a cmd=(curl -sS --max-time 60 -o "$WORK/response.json" -w '%{http_code}' -X "$method"
    -H "@$WORK/auth-header" -H "Content-Type: application/json" -H "x-goog-user-project: $PROJECT"
    --data-binary "@$body" "$url")
  show "${cmd[@]}"
  if ((DRY_RUN)); then
    HTTP_STATUS=200
    return 0
  fi
  HTTP_STATUS="$("${cmd[@]}")" || die "the Firebase Rules API could not be reached ($method $url)"
}

# gcloud alone has no command for Firestore security rules, so they are released through the
# Firebase Rules REST API, as `firebase deploy --only firestore:rules` does: create a ruleset
# from the file, then point the release `cloud.firestore` (the (default) database) at it,
# creating the release if the project has none yet. Each run creates a new ruleset.
deploy_rules() {
  say ""
  say "== Firestore security rules (firestore.rules)"
  local project_path="projects/$PROJECT" rules ruleset release="projects/$PROJECT/releases/cloud.firestore"
  show gcloud auth print-access-token
  if ! ((DRY_RUN)); then
    local token
    token="$(gcloud auth print-access-token)" || die "gcloud auth print-access-token failed: run 'gcloud auth login'"
    (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$WORK/auth-header")
  fi
  rules=""
  IFS= read -r -d '' rules <"$ROOT/firestore.rules" || true # the whole file, final newline included
  local content
  content="$(json_string "$rules")"
  printf '{"source":{"files":[{"name":"firestore.rules","content":%s}]}}\n' "$content" >"$WORK/ruleset.json"
  rules_api POST "$RULES_API/$project_path/rulesets" "$WORK/ruleset.json"
  [[ $HTTP_STATUS == 200 ]] || die "creating the ruleset failed (HTTP $HTTP_STATUS): $(cat "$WORK/response.json" 2>/dev/null)"
  if ((DRY_RUN)); then
    ruleset="$project_path/rulesets/<new-ruleset-id>"
  else
    [[ $(<"$WORK/response.json") =~ \"name\"[[:space:]]*:[[:space:]]*\"($project_path/rulesets/[^\"]+)\" ]] ||
      die "unexpected answer when creating the ruleset: $(<"$WORK/response.json")"
    ruleset=${BASH_REMATCH[1]}
  fi
  printf '{"release":{"name":"%s","rulesetName":"%s"}}\n' "$release" "$ruleset" >"$WORK/release-patch.json"
  rules_api PATCH "$RULES_API/$release" "$WORK/release-patch.json"
  if [[ $HTTP_STATUS == 404 ]]; then
    say "the project has no Firestore rules release yet: creating it"
    printf '{"name":"%s","rulesetName":"%s"}\n' "$release" "$ruleset" >"$WORK/release-create.json"
    rules_api POST "$RULES_API/$project_path/releases" "$WORK/release-create.json"
  fi
  [[ $HTTP_STATUS == 200 ]] || die "releasing the ruleset failed (HTTP $HTTP_STATUS): $(cat "$WORK/response.json" 2>/dev/null)"
  rm -f -- "$WORK/auth-header"
  say "firestore.rules released as $ruleset"
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
  local -a cmd=(gcloud functions deploy "$name" --gen2 "--runtime=$RUNTIME" "--region=$REGION"
    "--project=$PROJECT" "--source=$WORK/$entry" "--entry-point=$entry" --trigger-http
    --allow-unauthenticated "--memory=$memory" --cpu=1 "--timeout=$timeout"
    "--concurrency=$CONCURRENCY" "--max-instances=$MAX_INSTANCES"
    "--set-env-vars=$(env_vars "$webhook_url")"
    "--set-secrets=NOVITA_API_KEY=$API_KEY_SECRET:latest,WEBHOOK_SECRET=$WEBHOOK_SECRET_SECRET:latest")
  [[ -z $SERVICE_ACCOUNT ]] || cmd+=("--service-account=$SERVICE_ACCOUNT")
  run "${cmd[@]}"
  DEPLOYED+=("$name")
}

# Sets FN_URL to the https URL of a deployed function; status 1 when it is not deployed (or its
# URL cannot be read). A dry run pretends that only what it has "deployed" so far exists.
function_url() {
  local name=$1 quiet=${2:-}
  local -a cmd=(gcloud functions describe "$name" --gen2 "--region=$REGION" "--project=$PROJECT"
    "--format=value(serviceConfig.uri)")
  show "${cmd[@]}"
  FN_URL=""
  if ((DRY_RUN)); then
    [[ " ${DEPLOYED[*]} " == *" $name "* ]] || return 1
    FN_URL="<$name-url>"
    return 0
  fi
  if [[ -n $quiet ]]; then
    FN_URL="$("${cmd[@]}" 2>/dev/null)" || return 1
  else
    FN_URL="$("${cmd[@]}")" || return 1
  fi
  [[ $FN_URL == https://* ]] || return 1
}

# novita-webhook needs its own public URL in WEBHOOK_URL (it registers it with Novita for the
# video stage), but a gen2 function's URL exists only once the function does. So:
#   - if the function already exists, its URL is read first and it is deployed once with it;
#   - on the very first deploy it is deployed with a placeholder URL, its URL is read back and
#     it is deployed again with the real one. No sketch can exist in between (create-sketch is
#     deployed after), so the placeholder is never handed to Novita.
# A full `gcloud functions deploy` (not `gcloud run services update`) keeps the function's own
# configuration the single source of truth: a later deploy would otherwise undo a change made
# on the Cloud Run service underneath. The URL of a function never changes while it exists, so
# every later run is a single deploy of it.
deploy_webhook() {
  say ""
  say "== $WEBHOOK_FN (entry point $WEBHOOK_ENTRY)"
  local known=""
  if ((DRY_RUN)); then
    say "# dry run: shown as on a first deploy; when $WEBHOOK_FN exists already, it is deployed once, with its URL"
  fi
  if function_url "$WEBHOOK_FN" quiet; then
    known=$FN_URL
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" 120s 1Gi "$known"
  else
    say "$WEBHOOK_FN does not exist yet: first deploy with a placeholder WEBHOOK_URL"
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" 120s 1Gi "$PLACEHOLDER_WEBHOOK_URL"
  fi
  function_url "$WEBHOOK_FN" || die "could not read the URL of $WEBHOOK_FN after deploying it"
  if [[ $FN_URL != "$known" ]]; then
    say "$WEBHOOK_FN is at $FN_URL: deploying it again with WEBHOOK_URL=$FN_URL"
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" 120s 1Gi "$FN_URL"
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
  if ((DRY_RUN)); then
    say "DRY RUN: printing the commands; none of them is run."
  fi
}

summary() {
  local title="Deployed"
  ((DRY_RUN == 0)) || title="Dry run finished: nothing was changed"
  cat <<EOF

== $title
novita-webhook: $WEBHOOK_URL
create-sketch:  $CREATE_URL
Auth mode:      AUTH_MODE=$AUTH_MODE
CORS origins:   ${CORS_ORIGINS:-(none)}

Novita: nothing to set up. Each request registers its own webhook URL
  ($WEBHOOK_URL?sketch=...&stage=...&token=...); the API key is the secret $API_KEY_SECRET.

Frontend: call $CREATE_URL
  POST with the JSON sketch request to start one; GET ?id=<sketch id> to read it back.
EOF
  if [[ $AUTH_MODE == firebase ]]; then
    say "  Send 'Authorization: Bearer <Firebase ID token>' (user.getIdToken()) of Firebase project $PROJECT,"
    say "  and serve the frontend from an origin listed in --cors-origins."
  fi
  cat <<EOF

Recovery sweep (Cloud Scheduler, once per project; run from the repository root). The token is
derived from the webhook secret and never stored in the repository:
  SWEEP_TOKEN="\$(WEBHOOK_SECRET="\$(gcloud secrets versions access latest --secret=$WEBHOOK_SECRET_SECRET --project=$PROJECT)" python3 -m shared.webhook_tokens sweep-token)"
  gcloud scheduler jobs create http $SCHEDULER_JOB --project=$PROJECT --location=$REGION \\
    --schedule='*/5 * * * *' --uri="$WEBHOOK_URL?action=sweep" --http-method=POST \\
    --headers="Authorization=Bearer \${SWEEP_TOKEN}" --attempt-deadline=120s
  (if the job exists already, or after rotating $WEBHOOK_SECRET_SECRET: 'gcloud scheduler jobs update http
   $SCHEDULER_JOB' with the same flags, --update-headers instead of --headers)
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
  announce_mode
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/sketch-deploy.XXXXXX")"
  trap 'rm -rf -- "$WORK"' EXIT
  say ""
  say "== Checks"
  check_apis
  check_firestore
  check_secrets
  stage_all "$WORK"
  say "staged the sources in $WORK (removed on exit)"
  ((SKIP_RULES)) || deploy_rules
  deploy_webhook
  deploy_create
  summary
}

WEBHOOK_URL=""
CREATE_URL=""
FN_URL=""
HTTP_STATUS=""
DEPLOYED=()
main "$@"
