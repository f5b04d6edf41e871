# shellcheck shell=bash disable=SC2034,SC2154
# The functions' environment (sourced by deploy.sh): the catalogue of shared/core/config.py, the
# --env-file and its checks, what the deployed functions already have (kept, removed, dropped),
# and the variables each function is deployed with.
#
# Roles (python3 -m shared.core.config catalogue): `secret` comes from Secret Manager, `deploy`
# from deploy.sh's own flags, `tuning` from the operator (--env-file and a few flags; the same on
# all three functions), `local` only from local runs. Only tuning variables go in an env file.

declare -A CAT_ROLE=() CAT_DEFAULT=()
CAT_ORDER=()
# The tuning variables this deploy sets, and where each comes from (a flag, the env file, kept).
declare -A TUNING=() TUNING_FROM=()
# The deployed functions' variables: CURRENT[function|NAME]=value, CURRENT_NAMES[function]="A B".
declare -A CURRENT=() CURRENT_NAMES=() EXISTS=()
# What the plan found: lines to print before deploying, and again in the summary.
ENV_NOTES=()
ENV_LIST=()

# Who sets each variable that is not the operator's to put in an env file.
declare -A OWNER=(
  [NOVITA_API_KEY]="--api-key-secret (the Secret Manager secret deploy.sh passes)"
  [WEBHOOK_SECRET]="--webhook-secret-secret (the Secret Manager secret deploy.sh passes)"
  [GOOGLE_CLOUD_PROJECT]="--project"
  [WEBHOOK_URL]="deploy.sh itself: the public URL of novita-webhook"
  [WEBHOOK_DOOR]="deploy.sh itself: public on novita-webhook, private on novita-webhook-steps"
  [AUTH_MODE]="--auth-mode"
  [CORS_ALLOWED_ORIGINS]="--cors-origins"
  [MEDIA_BUCKET]="--bucket"
  [MEDIA_URL_POLICY]="deploy.sh itself: always public-https"
  [FIREBASE_PROJECT_NUMBER]="deploy.sh itself: the project's number"
)
# Variables Cloud Functions sets on every gen2 function itself: neither kept nor dropped by us.
readonly PLATFORM_VARIABLES=" LOG_EXECUTION_ID "
readonly CAPS=(MAX_SKETCHES_IN_PROGRESS MAX_SKETCHES_PER_DAY MAX_GUEST_SKETCHES_PER_DAY MAX_SKETCHES_PER_DAY_TOTAL)

# NAME<TAB>role<TAB>default for every variable the functions read.
load_catalogue() {
  local text name role default
  text="$(cd "$ROOT" && python3 -m shared.core.config catalogue)" ||
    die "python3 -m shared.core.config catalogue failed (see above)"
  while IFS=$'\t' read -r name role default; do
    [[ $name =~ ^[A-Z][A-Z0-9_]*$ && $role =~ ^(secret|deploy|tuning|local)$ ]] ||
      die "unexpected line from shared.core.config catalogue: '$name $role'"
    CAT_ROLE[$name]=$role
    CAT_DEFAULT[$name]=$default
    CAT_ORDER+=("$name")
  done <<<"$text"
}

# Why variable $1 may not be set by the operator (empty when it may).
refusal() {
  local name=$1
  case ${CAT_ROLE[$name]:-unknown} in
    tuning) ;;
    secret) printf '%s is a secret: it comes from Secret Manager, never from a file; set it with %s' \
      "$name" "${OWNER[$name]:-its secret flag}" ;;
    deploy) printf '%s is set by deploy.sh from %s; use that, not the env file' "$name" "${OWNER[$name]:-its flags}" ;;
    local) printf '%s is for local runs only (emulators and local stand-ins); it is never deployed' "$name" ;;
    *) printf '%s is not a variable the functions read' "$name" ;;
  esac
}

# $1 without the spaces around it.
trim() {
  local s=$1
  s=${s#"${s%%[![:space:]]*}"}
  printf '%s' "${s%"${s##*[![:space:]]}"}"
}

# Reads the env file as shared.core.config reads one: NAME=value lines, blank lines and # comments
# skipped, spaces around name and value dropped. Fills the tuning variables, or lists every
# problem, one a line, and stops.
read_env_file() {
  local line number=0 name value problem
  local -a problems=()
  local -A seen=()
  while IFS= read -r line || [[ -n $line ]]; do
    number=$((number + 1))
    line=$(trim "$line")
    [[ -z $line || $line == \#* ]] && continue
    name=$(trim "${line%%=*}")
    if [[ $line != *=* || ! $name =~ ^[A-Z][A-Z0-9_]*$ ]]; then
      problems+=("line $number: expected NAME=value, got '${line:0:80}'")
      continue
    fi
    value=$(trim "${line#*=}")
    if [[ -n ${seen[$name]+set} ]]; then
      problems+=("line $number: $name is set twice")
      continue
    fi
    seen[$name]=1
    problem=$(refusal "$name")
    if [[ -n $problem ]]; then
      problems+=("$problem")
      continue
    fi
    if [[ -n ${TUNING[$name]+set} && ${TUNING[$name]} != "$value" ]]; then
      problems+=("$name is set both by ${TUNING_FROM[$name]} (${TUNING[$name]}) and in the file ($value); give it once")
      continue
    fi
    [[ -n ${TUNING[$name]+set} ]] || TUNING_FROM[$name]="--env-file"
    TUNING[$name]=$value
  done <"$ENV_FILE"
  if ((${#problems[@]})); then
    for problem in "${problems[@]}"; do printf 'deploy.sh: error: %s: %s\n' "$ENV_FILE" "$problem" >&2; done
    exit 1
  fi
}

# The tuning flags, the env file, --unset, the rule of --auth-mode none, and every value checked by
# shared.core.config with the rules the functions apply at start. Needs no gcloud: it runs before
# anything is read from or changed in the project (a dry run too).
check_environment() {
  load_catalogue
  local name
  [[ -z $NOVITA_BASE_URL ]] || { TUNING[NOVITA_BASE_URL]=$NOVITA_BASE_URL; TUNING_FROM[NOVITA_BASE_URL]="--novita-base-url"; }
  [[ -z $T2I_MODEL ]] || { TUNING[NOVITA_T2I_MODEL]=$T2I_MODEL; TUNING_FROM[NOVITA_T2I_MODEL]="--t2i-model"; }
  [[ -z $APP_CHECK ]] || { TUNING[APP_CHECK]=$APP_CHECK; TUNING_FROM[APP_CHECK]="--app-check"; }
  [[ -z $MAX_PER_DAY_TOTAL ]] ||
    { TUNING[MAX_SKETCHES_PER_DAY_TOTAL]=$MAX_PER_DAY_TOTAL; TUNING_FROM[MAX_SKETCHES_PER_DAY_TOTAL]="--max-per-day-total"; }
  for name in "${!TUNING[@]}"; do
    [[ ${CAT_ROLE[$name]:-} == tuning ]] || die "shared/core/config.py no longer has the tuning variable $name (set by ${TUNING_FROM[$name]})"
  done
  [[ -z $ENV_FILE ]] || read_env_file
  for name in "${UNSET[@]}"; do
    [[ ${CAT_ROLE[$name]:-} == tuning ]] ||
      die "--unset $name: only tuning variables can be removed; $(refusal "$name")"
    [[ -z ${TUNING[$name]+set} ]] || die "--unset $name, but ${TUNING_FROM[$name]} sets it; give one or the other"
  done
  if [[ $AUTH_MODE == none ]]; then
    if ! ((ALLOW_OPEN)) || [[ -z ${TUNING[MAX_SKETCHES_PER_DAY_TOTAL]+set} ]]; then
      die "--auth-mode none lets anyone on the internet spend your Novita credit through create-sketch;
  it needs --allow-open and a project-wide daily cap: --max-per-day-total N (or MAX_SKETCHES_PER_DAY_TOTAL=N in --env-file)"
    fi
  fi
  check_values "${ENV_FILE:-the flags}"
}

# Runs `python3 -m shared.core.config check` on everything create-sketch would be deployed with
# (its variables are a superset of the doors'; the secrets and the webhook's URL are stood in
# for by the module itself), naming $1 in each problem.
check_values() {
  local label=$1 name number=1 line
  [[ $PROJECT_NUMBER =~ ^[0-9]+$ ]] && number=$PROJECT_NUMBER
  {
    printf 'GOOGLE_CLOUD_PROJECT=%s\nAUTH_MODE=%s\nMEDIA_BUCKET=%s\nMEDIA_URL_POLICY=public-https\n' \
      "$PROJECT" "$AUTH_MODE" "$BUCKET"
    printf 'FIREBASE_PROJECT_NUMBER=%s\n' "$number"
    [[ -z $CORS_ORIGINS ]] || printf 'CORS_ALLOWED_ORIGINS=%s\n' "$CORS_ORIGINS"
    for name in "${CAT_ORDER[@]}"; do
      [[ -z ${TUNING[$name]+set} ]] || printf '%s=%s\n' "$name" "${TUNING[$name]}"
    done
  } >"$WORK/settings.env"
  if ! (cd "$ROOT" && python3 -m shared.core.config check "$WORK/settings.env") 2>"$WORK/settings.err"; then
    while IFS= read -r line; do
      printf 'deploy.sh: error: %s: %s\n' "$label" "${line#"$WORK/settings.env: "}" >&2
    done <"$WORK/settings.err"
    exit 1
  fi
}

# ------------------------------------------------------------------ the deployed functions

# Reads the variables of the deployed function $1 (none when it does not exist yet).
read_deployed_env() {
  local fn=$1 name value parsed
  CURRENT_NAMES[$fn]=""
  describe "function $fn" gcloud functions describe "$fn" --gen2 "--region=$REGION" "--project=$PROJECT" \
    --format=json || return 0
  EXISTS[$fn]=1
  parsed="$(python3 -c '
import json, sys
config = json.load(sys.stdin).get("serviceConfig") or {}
for name, value in sorted((config.get("environmentVariables") or {}).items()):
    print(name + "\t" + " ".join(str(value).splitlines()))
' <<<"$FOUND")" || die "could not read the variables of $fn from gcloud's description"
  while IFS=$'\t' read -r name value; do
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    CURRENT[$fn|$name]=$value
    CURRENT_NAMES[$fn]+=" $name"
  done <<<"$parsed"
}

# Before anything changes: what the three functions have now, and what becomes of each variable
# this deploy does not set. A tuning variable is kept (the same on all three functions) unless
# --unset names it; anything else is dropped, and said so with the reason.
plan_environment() {
  local fn name value first removed
  for fn in "${FUNCTIONS[@]}"; do read_deployed_env "$fn"; done
  if ((DRY_RUN)); then
    ENV_NOTES+=("(dry run: the deployed functions are not read, so what would be kept or dropped is not known)")
    return 0
  fi
  local -A kept_on=() removed_on=()
  for fn in "${FUNCTIONS[@]}"; do
    for name in ${CURRENT_NAMES[$fn]}; do
      [[ ${CAT_ROLE[$name]:-} == tuning && -z ${TUNING[$name]+set} ]] || continue
      value=${CURRENT[$fn|$name]}
      if [[ " ${UNSET[*]} " == *" $name "* ]]; then
        removed_on[$name]+="${removed_on[$name]:+, }$fn"
        continue
      fi
      if [[ -n ${kept_on[$name]+set} ]]; then
        first=${kept_on[$name]%%,*}
        [[ ${CURRENT[$first|$name]} == "$value" ]] ||
          die "$name differs between the deployed functions ($first: ${CURRENT[$first|$name]}; $fn: $value);
  a tuning variable is the same on all three: set it with --env-file, or remove it with --unset $name"
      fi
      kept_on[$name]+="${kept_on[$name]:+, }$fn"
    done
  done
  for name in "${CAT_ORDER[@]}"; do
    if [[ -n ${kept_on[$name]+set} ]]; then
      first=${kept_on[$name]%%,*}
      TUNING[$name]=${CURRENT[$first|$name]}
      TUNING_FROM[$name]="kept"
      ENV_NOTES+=("kept from the deployed function: $name=${TUNING[$name]} (on ${kept_on[$name]}; --unset $name removes it)")
    fi
    [[ -z ${removed_on[$name]+set} ]] || ENV_NOTES+=("removed (--unset): $name (was on ${removed_on[$name]})")
  done
  for name in "${UNSET[@]}"; do
    [[ -n ${removed_on[$name]+set} ]] || ENV_NOTES+=("--unset $name: no deployed function has it; nothing to remove")
  done
  for fn in "${FUNCTIONS[@]}"; do
    function_env "$fn" "<url>"
    for name in ${CURRENT_NAMES[$fn]}; do
      [[ ${CAT_ROLE[$name]:-} != tuning && $PLATFORM_VARIABLES != *" $name "* ]] || continue
      [[ " ${ENV_LIST[*]%%=*} " != *" $name "* ]] || continue
      case ${CAT_ROLE[$name]:-unknown} in
        deploy) removed="owned by deploy.sh (${OWNER[$name]:-its flags}), which does not set it on $fn" ;;
        secret) removed="a secret; deploy.sh passes it from Secret Manager (${OWNER[$name]:-its secret flag})" ;;
        local) removed="local runs only" ;;
        *) removed="unknown to the functions" ;;
      esac
      [[ $name != THREADS ]] || removed="set by deploy.sh from --concurrency"
      ENV_NOTES+=("dropped: $name (from $fn: $removed)")
    done
  done
  # Kept values are checked by the functions' rules too: one that no longer passes is refused now.
  [[ " ${TUNING_FROM[*]} " != *" kept "* ]] || check_values "the settings to deploy (kept values included)"
}

# ---------------------------------------------------------------------- the environments

# The door of function $1: public, private, or "none" (create-sketch has no WEBHOOK_DOOR).
door_of() {
  case $1 in
    "$WEBHOOK_FN") printf public ;;
    "$STEPS_FN") printf private ;;
    *) printf none ;;
  esac
}

# Fills ENV_LIST with the NAME=value variables of function $1, whose WEBHOOK_URL is $2. All three
# carry the tuning variables (the same everywhere) and FIREBASE_PROJECT_NUMBER (App Check needs it,
# and the functions refuse to start with APP_CHECK set but no number); only create-sketch has the
# caller rules (AUTH_MODE, CORS_ALLOWED_ORIGINS); each webhook door has its WEBHOOK_DOOR.
function_env() {
  local fn=$1 url=$2 door name
  door=$(door_of "$fn")
  ENV_LIST=("GOOGLE_CLOUD_PROJECT=$PROJECT" "WEBHOOK_URL=$url")
  [[ $door == none ]] || ENV_LIST+=("WEBHOOK_DOOR=$door")
  ENV_LIST+=("MEDIA_BUCKET=$BUCKET" "MEDIA_URL_POLICY=public-https" "FIREBASE_PROJECT_NUMBER=$PROJECT_NUMBER"
    # functions-framework serves with gunicorn threads; one per concurrent request.
    "THREADS=$CONCURRENCY")
  if [[ $fn == "$CREATE_FN" ]]; then
    ENV_LIST+=("AUTH_MODE=$AUTH_MODE")
    [[ -z $CORS_ORIGINS ]] || ENV_LIST+=("CORS_ALLOWED_ORIGINS=$CORS_ORIGINS")
  fi
  for name in "${CAT_ORDER[@]}"; do
    [[ -z ${TUNING[$name]+set} ]] || ENV_LIST+=("$name=${TUNING[$name]}")
  done
}

# ENV_LIST as one --set-env-vars value, in gcloud's alternate-delimiter form "^D^K=V" + "DK=V"...,
# with a delimiter that no value contains (CORS_ALLOWED_ORIGINS has commas). --set-env-vars
# replaces every variable, so what is deployed is exactly this list.
env_flag() {
  local delimiter var joined=""
  for delimiter in ';' '|' '#' '~' '@'; do
    [[ "${ENV_LIST[*]}" != *"$delimiter"* ]] && break
  done
  [[ "${ENV_LIST[*]}" != *"$delimiter"* ]] || die "no delimiter fits the values of the variables: ${ENV_LIST[*]}"
  for var in "${ENV_LIST[@]}"; do joined+="$delimiter$var"; done
  printf -- '--set-env-vars=^%s^%s' "$delimiter" "${joined#"$delimiter"}"
}

secrets_flag() {
  printf -- '--set-secrets=NOVITA_API_KEY=%s:latest,WEBHOOK_SECRET=%s:latest' "$API_KEY_SECRET" "$WEBHOOK_SECRET_SECRET"
}

# Prints the NAME=value lines $1 (indented), then the secrets by their Secret Manager names.
print_env() {
  local line
  while IFS= read -r line; do
    [[ -z $line ]] || say "      $line"
  done <<<"$1"
  say "      NOVITA_API_KEY  <- Secret Manager secret $API_KEY_SECRET (latest)"
  say "      WEBHOOK_SECRET  <- Secret Manager secret $WEBHOOK_SECRET_SECRET (latest)"
}

# What will be deployed, before anything changes.
print_plan() {
  local fn note
  say ""
  say "== What will be deployed"
  for fn in "${FUNCTIONS[@]}"; do
    function_env "$fn" "<the public URL of $WEBHOOK_FN>"
    say "  $fn ($(door_title "$fn"); $(exists_word "$fn"))"
    print_env "$(printf '%s\n' "${ENV_LIST[@]}")"
  done
  for note in "${ENV_NOTES[@]}"; do say "  $note"; done
}

# Who may call function $1: private (the steps door) or public (the other two).
access_of() {
  if [[ $(door_of "$1") == private ]]; then printf private; else printf public; fi
}

# What function $1 is for and who may call it.
door_title() {
  case $(door_of "$1") in
    public) printf "public door: Novita's deliveries only; anyone may call (invoker IAM check off)" ;;
    private) printf "private door: Pub/Sub's pushes and the sweep; only %s may call (Cloud Run IAM)" "$PUSH_SA" ;;
    *) printf "public: the frontend's API; anyone may call (invoker IAM check off), AUTH_MODE decides" ;;
  esac
}

exists_word() {
  if ((DRY_RUN)); then
    printf 'shown as new'
  elif [[ -n ${EXISTS[$1]:-} ]]; then
    printf 'exists: updated'
  else
    printf 'new'
  fi
}

# A cap's value as deployed, or the code's default.
cap_value() {
  if [[ -n ${TUNING[$1]+set} ]]; then
    printf '%s' "${TUNING[$1]}"
  else
    printf "%s (the code's default)" "${CAT_DEFAULT[$1]:-?}"
  fi
}
