# shellcheck shell=bash disable=SC2034,SC2154
# deploy.sh's flags (sourced by it): their defaults, --help, parsing and the checks that need
# neither gcloud nor python3.

PROJECT="${GOOGLE_CLOUD_PROJECT:-}"
REGION="${REGION:-us-central1}"
AUTH_MODE="firebase"
ALLOW_OPEN=0
CORS_ORIGINS=""
NOVITA_BASE_URL=""
T2I_MODEL=""
APP_CHECK=""
MAX_PER_DAY_TOTAL=""
ENV_FILE=""
UNSET=()
API_KEY_SECRET="novita-api-key"
WEBHOOK_SECRET_SECRET="webhook-secret"
RUNTIME_SA=""
BUILD_SA=""
PUSH_SA=""
BUCKET=""
MAX_INSTANCES="10"
CONCURRENCY="32"
DRY_RUN=0
SKIP_RULES=0
SKIP_CHECKS=0
STAGE_ONLY=""

usage() {
  cat <<EOF
Usage: ./deploy.sh [options]

Deploys the sketch machine to one Google Cloud project, creating or updating (never
duplicating) everything it needs, in this order:
  - service accounts: the functions run as one, Cloud Build builds as one, and Pub/Sub and
    Cloud Scheduler call the private door as one (the push account), with their roles
  - the media bucket (uniform access, public access prevented), linked to Firebase Storage
  - security rules: firestore.rules and storage.rules (Firebase Rules API)
  - Firestore: the composite indexes of firestore.indexes.json, and TTL policies
  - Pub/Sub: the steps topic and its dead-letter topic
  - novita-webhook: the public door, Novita's deliveries only (first, so its URL is known)
  - novita-webhook-steps: the private door (same source), for Pub/Sub's pushes and the sweep;
    only the push account may call it (Cloud Run IAM)
  - the push subscriptions of the steps, to the private door, with an OIDC token
  - create-sketch: the public API
  - the Cloud Scheduler job that runs the recovery sweep every minute, with an OIDC token
  - then it proves the deployment (see --skip-checks) and prints what it deployed
Public services are public with Cloud Run's invoker IAM check disabled, not with allUsers.
Safe to run again. See docs/deploying.md.

Options:
  --project ID              Google Cloud project (default: \$GOOGLE_CLOUD_PROJECT)
  --region R                region of the functions, the bucket and the job
                            (default: \$REGION, else us-central1)
  --auth-mode MODE          firebase (default): create-sketch requires a Firebase ID token
                            none: anyone may call create-sketch; refused unless --allow-open
                            and a project-wide daily cap (--max-per-day-total) are given
  --allow-open              confirms --auth-mode none (warns loudly)
  --max-per-day-total N     sketches the whole project may make per UTC day
                            (-> MAX_SKETCHES_PER_DAY_TOTAL, on all three functions)
  --app-check MODE          off, monitor or enforce: Firebase App Check on create-sketch
                            (-> APP_CHECK; default: unset, which means off)
  --cors-origins LIST       comma-separated browser origins allowed to call create-sketch,
                            e.g. https://app.example.com,http://localhost:5173
                            (-> CORS_ALLOWED_ORIGINS; default empty: no browser origin may call)
  --env-file FILE           NAME=value lines of tuning variables, applied to all three
                            functions; checked before anything changes
                            (python3 -m shared.core.config catalogue lists them)
  --unset NAME              remove the tuning variable NAME that the deployed functions
                            have; without it, such a variable is kept (repeatable)
  --novita-base-url URL     -> NOVITA_BASE_URL (default in the code: https://api.novita.ai)
  --t2i-model NAME          -> NOVITA_T2I_MODEL (default in the code: seedream_3_0)
  --api-key-secret NAME     Secret Manager secret holding the Novita API key
                            (default: novita-api-key; -> NOVITA_API_KEY)
  --webhook-secret-secret NAME
                            Secret Manager secret holding the webhook token key
                            (default: webhook-secret; -> WEBHOOK_SECRET)
  --service-account EMAIL   service account the three functions run as
                            (default: $RUNTIME_SA_ID@PROJECT.iam.gserviceaccount.com, created
                            if missing; it is granted the roles the functions need)
  --build-service-account EMAIL
                            service account Cloud Build builds the functions as
                            (default: $BUILD_SA_ID@PROJECT.iam.gserviceaccount.com, created
                            if missing; it is granted roles/run.builder)
  --push-service-account EMAIL
                            service account whose OIDC tokens Pub/Sub and Cloud Scheduler send
                            to the private door (default: $PUSH_SA_ID@PROJECT.iam.gserviceaccount.com,
                            created if missing; it is granted roles/run.invoker on that door only)
  --bucket NAME             Cloud Storage bucket of the stills and videos (-> MEDIA_BUCKET;
                            default: PROJECT-sketch-media, created in the region if missing)
  --max-instances N         per function (default: 10)
  --concurrency N           requests per instance, and gunicorn threads (default: 32)
  --skip-rules              do not deploy firestore.rules and storage.rules
  --skip-checks             do not prove the deployment at the end (token URL, sweep,
                            invoker checks); the summary says so
  --dry-run                 print every command (prefixed "+ ") and run none of them;
                            shown as on a first deploy; checks the env file; stages the
                            sources into a temporary folder only
  --stage-only DIR          only stage the two source folders into DIR/create_sketch and
                            DIR/novita_webhook (main.py, shared/, requirements.txt,
                            .gcloudignore; both webhook doors deploy DIR/novita_webhook) and
                            exit; needs no project and no gcloud
  -h, --help                show this help

Needs: bash 4.4 or newer, gcloud, logged in with owner-like rights on the project (it creates
service accounts and grants roles); curl (Firebase Rules and Storage APIs, the token URL
check); python3 (the repository's shared/core/config.py, shared/pipeline/topology.py and
shared/core/tokens.py, which need nothing beyond its standard library).
The two secrets must exist in Secret Manager; the script checks them and says how to create
them. The project must have Firebase added (the bucket is linked to Firebase Storage).
EOF
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
      --skip-checks) SKIP_CHECKS=1; shift; continue ;;
      --allow-open) ALLOW_OPEN=1; shift; continue ;;
      --project | --region | --auth-mode | --novita-base-url | --t2i-model | --api-key-secret | \
        --webhook-secret-secret | --service-account | --build-service-account | --push-service-account | \
        --bucket | --max-instances | --concurrency | --stage-only | --app-check | --max-per-day-total | \
        --env-file | --unset)
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
      --app-check) APP_CHECK=$value ;;
      --max-per-day-total) MAX_PER_DAY_TOTAL=$value ;;
      --env-file) ENV_FILE=$value ;;
      --unset) UNSET+=("$value") ;;
      --api-key-secret) API_KEY_SECRET=$value ;;
      --webhook-secret-secret) WEBHOOK_SECRET_SECRET=$value ;;
      --service-account) RUNTIME_SA=$value ;;
      --build-service-account) BUILD_SA=$value ;;
      --push-service-account) PUSH_SA=$value ;;
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
  [[ -z $APP_CHECK || $APP_CHECK =~ ^(off|monitor|enforce)$ ]] ||
    die "--app-check must be off, monitor or enforce, got '$APP_CHECK'"
  [[ -z $MAX_PER_DAY_TOTAL || $MAX_PER_DAY_TOTAL =~ ^[1-9][0-9]{0,7}$ ]] ||
    die "--max-per-day-total must be a whole number from 1 to 10000000, got '$MAX_PER_DAY_TOTAL'"
  [[ $REGION =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || die "--region '$REGION' is not a region name such as us-central1"
  [[ $MAX_INSTANCES =~ ^[1-9][0-9]*$ ]] || die "--max-instances must be a positive integer"
  [[ $CONCURRENCY =~ ^[1-9][0-9]*$ ]] || die "--concurrency must be a positive integer"
  local name
  for name in "$API_KEY_SECRET" "$WEBHOOK_SECRET_SECRET"; do
    [[ $name =~ ^[A-Za-z0-9_-]{1,255}$ ]] || die "secret name '$name' is not a valid Secret Manager name"
  done
  for name in "$RUNTIME_SA" "$BUILD_SA" "$PUSH_SA"; do
    [[ -z $name || $name =~ ^[a-z0-9-]+@[a-z0-9.-]+\.gserviceaccount\.com$ ]] ||
      die "'$name' is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)"
  done
  for name in "${UNSET[@]}"; do
    [[ $name =~ ^[A-Z][A-Z0-9_]*$ ]] || die "--unset '$name' is not a variable name"
  done
  [[ -z $ENV_FILE || -f $ENV_FILE && -r $ENV_FILE ]] || die "--env-file '$ENV_FILE' is not a readable file"
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
  ((ALLOW_OPEN == 0)) || [[ $AUTH_MODE == none ]] || warn "--allow-open changes nothing without --auth-mode none"
}
