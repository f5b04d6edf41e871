# shellcheck shell=bash disable=SC2034,SC2154
# The gcloud and REST plumbing of deploy.sh (sourced by it; the globals it reads are deploy.sh's):
# print a command and run it (or only print it on a dry run), tell "not found" from any other
# failure, add IAM bindings, call Google's REST APIs with curl, deploy a function again while
# fresh grants propagate, and make a Cloud Run service public or private.

# Per function: its URL, its Cloud Run service, what it was deployed as and with which
# variables (NAME=value lines), for the summary.
declare -A URL=() SERVICE=() SHAPE=() DEPLOYED_ENV=()

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

# ------------------------------------------------------------------- grants that propagate

# gcloud's refusals that mean "a grant made moments ago has not reached every Google service
# yet" (IAM: "typically 2 minutes, potentially 7 minutes or longer"), each with what it waits
# for: extended regular expression (matched case-insensitively on the whole message), tab, why.
readonly -a PROPAGATION_ERRORS=(
  $'missing permission on the build service account\tthe build service account\'s roles (roles/run.builder) to reach Cloud Build'
  $'permission denied on secret\tthe runtime service account\'s access to the secrets (roles/secretmanager.secretAccessor)'
  $'secret manager secret accessor\tthe runtime service account\'s access to the secrets (roles/secretmanager.secretAccessor)'
  $'artifactregistry\\.repositories\\.list\tthe build service account\'s access to Artifact Registry (roles/run.builder)'
  $'iam\\.serviceaccounts\\.actas\tyour right to act as the functions\' service accounts (iam.serviceAccounts.actAs)'
  $'does not have permission[^.]*service ?account\ta permission on a service account granted moments ago'
)
# 15 s doubling: 15 + 30 + 60 + 120 + 240 = 465 s, about 8 minutes of waiting in all.
readonly PROPAGATION_FIRST_WAIT=15 PROPAGATION_ATTEMPTS=6

# Sets WAITING_FOR to what the error text in file $1 waits for; status 1 when it is no
# propagation error.
propagation_error() {
  local text entry
  text=$(tr '\n' ' ' <"$1")
  WAITING_FOR=""
  for entry in "${PROPAGATION_ERRORS[@]}"; do
    if grep -Eiq -- "${entry%%$'\t'*}" <<<"$text"; then
      WAITING_FOR=${entry#*$'\t'}
      return 0
    fi
  done
  return 1
}

# Runs a command that a grant still propagating may refuse (a function deploy, on day one):
# such a refusal is tried again after 15 s, 30 s, ... up to about 8 minutes in all; any other
# failure stops the deploy at once. gcloud's messages go to stderr as they come, and to a file.
run_while_grants_propagate() {
  show "$@"
  ((DRY_RUN)) && return 0
  local attempt=1 wait=$PROPAGATION_FIRST_WAIT status
  while true; do
    status=0
    { "$@" 2>&1 1>&3 3>&- | tee "$WORK/attempt.err" >&2; } 3>&1 || status=$?
    ((status == 0)) && return 0
    if ! propagation_error "$WORK/attempt.err"; then
      die "$1 $2 $3 failed (gcloud's message is above); stopped"
    fi
    if ((attempt >= PROPAGATION_ATTEMPTS)); then
      die "$1 $2 $3 was still refused after $attempt attempts (about 8 minutes) waiting for $WAITING_FOR;
  check that grant (docs/deploying.md, \"Day one\") and run deploy.sh again"
    fi
    say "refused while a fresh grant propagates: waiting ${wait} s for $WAITING_FOR (attempt $((attempt + 1)) of $PROPAGATION_ATTEMPTS; Google: typically 2 minutes, potentially 7 minutes or longer)"
    sleep "$wait"
    attempt=$((attempt + 1))
    wait=$((wait * 2))
  done
}

# ------------------------------------------------------------------------------ REST calls

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

# A JSON string literal of $1 (a rules file is plain text; other control characters refused).
json_string() {
  local s=$1
  if [[ $s =~ [[:cntrl:]] ]]; then
    local stripped=${s//[$'\n\t\r']/}
    [[ ! $stripped =~ [[:cntrl:]] ]] || die "a rules file contains control characters"
  fi
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

# gcloud alone has no command for Firebase security rules, so they are released through the
# Firebase Rules REST API, as `firebase deploy --only firestore:rules,storage` does: create a
# ruleset from the file ($1, sent under its own name), then point the release ($2) at it,
# creating the release if the project has none yet. Each run creates a new ruleset.
release_rules() {
  local file=$1 release="projects/$PROJECT/releases/$2" project_path="projects/$PROJECT" rules ruleset
  rules=""
  IFS= read -r -d '' rules <"$ROOT/$file" || true # the whole file, final newline included
  printf '{"source":{"files":[{"name":"%s","content":%s}]}}\n' "$file" "$(json_string "$rules")" \
    >"$WORK/ruleset.json"
  api_call POST "$RULES_API/$project_path/rulesets" "$WORK/ruleset.json"
  [[ $HTTP_STATUS == 200 ]] || die "creating the ruleset of $file failed (HTTP $HTTP_STATUS): $(response)"
  if ((DRY_RUN)); then
    ruleset="$project_path/rulesets/<new-ruleset-id>"
  else
    [[ $(<"$WORK/response.json") =~ \"name\"[[:space:]]*:[[:space:]]*\"($project_path/rulesets/[^\"]+)\" ]] ||
      die "unexpected answer when creating the ruleset of $file: $(<"$WORK/response.json")"
    ruleset=${BASH_REMATCH[1]}
  fi
  printf '{"release":{"name":"%s","rulesetName":"%s"}}\n' "$release" "$ruleset" >"$WORK/release-patch.json"
  api_call PATCH "$RULES_API/$release" "$WORK/release-patch.json"
  if [[ $HTTP_STATUS == 404 ]]; then
    say "the project has no release $2 yet: creating it"
    printf '{"name":"%s","rulesetName":"%s"}\n' "$release" "$ruleset" >"$WORK/release-create.json"
    api_call POST "$RULES_API/$project_path/releases" "$WORK/release-create.json"
  fi
  [[ $HTTP_STATUS == 200 ]] || die "releasing the ruleset of $file failed (HTTP $HTTP_STATUS): $(response)"
  UPDATED+=("$file -> $2 ($ruleset)")
}

# ------------------------------------------------------------------------------ functions

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

# Sets SERVICE[$1] to the Cloud Run service under the function $1 (a gen2 function is one).
read_service_name() {
  local name=$1
  local -a cmd=(gcloud functions describe "$name" --gen2 "--region=$REGION" "--project=$PROJECT"
    "--format=value(serviceConfig.service.basename())")
  if ((DRY_RUN)); then
    show "${cmd[@]}"
    SERVICE[$name]="<$name-service>"
    return 0
  fi
  describe "function $name" "${cmd[@]}" || die "function $name is not there right after its deploy"
  [[ $FOUND =~ ^[a-z0-9-]+$ ]] || die "unexpected Cloud Run service name of $name: '$FOUND'"
  SERVICE[$name]=$FOUND
}

# Whether the invoker IAM check of Cloud Run service $1 is disabled (its annotation, compared
# case-insensitively with "true"): status 0 when it is, 1 when it is not, 2 when gcloud could
# not say (its message is in $WORK/invoker.err). The annotation's value is left in FOUND.
invoker_check_disabled() {
  local -a cmd=(gcloud run services describe "$1" "--region=$REGION" "--project=$PROJECT"
    '--format=value(metadata.annotations."run.googleapis.com/invoker-iam-disabled")')
  show "${cmd[@]}"
  FOUND=""
  ((DRY_RUN)) && return 0
  FOUND="$("${cmd[@]}" 2>"$WORK/invoker.err")" || return 2
  [[ $(tr '[:upper:]' '[:lower:]' <<<"$FOUND") == true ]]
}

# Public ($2 = public): Cloud Run's invoker IAM check off, so that anyone reaches the service
# without an allUsers binding, which organizations with domain restricted sharing refuse.
# Private: the check on, so that only the members holding roles/run.invoker on it get in.
# `gcloud functions deploy` has no flag for it, and a later deploy may restore the check, so this
# follows every deploy of the function; the annotation is then read back.
set_invoker_check() {
  local name=$1 access=$2 svc status=0
  read_service_name "$name"
  svc=${SERVICE[$name]}
  if [[ $access == public ]]; then
    run gcloud run services update "$svc" "--region=$REGION" "--project=$PROJECT" --no-invoker-iam-check
  else
    run gcloud run services update "$svc" "--region=$REGION" "--project=$PROJECT" --invoker-iam-check
  fi
  invoker_check_disabled "$svc" || status=$?
  ((DRY_RUN)) && return 0
  if ((status == 2)); then
    cat "$WORK/invoker.err" >&2
    die "could not read the invoker IAM check of the Cloud Run service $svc (gcloud's message is above)"
  fi
  if [[ $access == public ]] && ((status != 0)); then
    die "the invoker IAM check of $svc ($name) is still on after --no-invoker-iam-check (annotation: '${FOUND}'); nobody outside could call it"
  fi
  if [[ $access == private ]] && ((status == 0)); then
    die "the invoker IAM check of $svc ($name) is still off after --invoker-iam-check: the private door would be open to anyone"
  fi
  if [[ $access == public ]]; then say "$svc: invoker IAM check off (public)"; else say "$svc: invoker IAM check on (private)"; fi
}

# ----------------------------------------------------------------- create unless it exists

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

ensure_topic() {
  local topic=$1
  describe "topic $topic" gcloud pubsub topics describe "$topic" "--project=$PROJECT" "--format=value(name)" &&
    return 0
  run gcloud pubsub topics create "$topic" "--project=$PROJECT"
  CREATED+=("Pub/Sub topic $topic")
}

# Creates the push subscription, or updates it with every setting: gcloud resets the push
# (endpoint, OIDC account and audience), retry or dead-letter settings left out of an update to
# their defaults, so every one of them is given every time.
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

# --------------------------------------------------------------------- a function's deploy

# Deploys function $1 (source folder $2, timeout $3, memory $4) with WEBHOOK_URL=$5, then sets
# who may call it (set_invoker_check). Every function is deployed without an allUsers binding
# (--no-allow-unauthenticated); a refusal while fresh grants propagate is tried again.
deploy_function() {
  local name=$1 entry=$2 timeout=$3 memory=$4 webhook_url=$5 env
  function_env "$name" "$webhook_url"
  env=$(env_flag) || exit 1
  DEPLOYED_ENV[$name]="$(printf '%s\n' "${ENV_LIST[@]}")"
  SHAPE[$name]="source functions/$entry, entry point $entry, $memory, timeout $timeout, concurrency $CONCURRENCY, at most $MAX_INSTANCES instances"
  run_while_grants_propagate gcloud functions deploy "$name" --gen2 "--runtime=$RUNTIME" "--region=$REGION" \
    "--project=$PROJECT" "--source=$WORK/$entry" "--entry-point=$entry" --trigger-http \
    --no-allow-unauthenticated "--memory=$memory" --cpu=1 "--timeout=$timeout" \
    "--concurrency=$CONCURRENCY" "--max-instances=$MAX_INSTANCES" \
    "--service-account=$RUNTIME_SA" "--build-service-account=projects/$PROJECT/serviceAccounts/$BUILD_SA" \
    "$env" "$(secrets_flag)"
  DEPLOYED+=("$name")
  set_invoker_check "$name" "$(access_of "$name")"
}

# ------------------------------------------------------------------------ Firestore indexes

# The composite indexes of firestore.indexes.json (the Firebase CLI's format) that the project
# lacks (listed in $WORK/indexes.json), one a line: collection group, query scope, then gcloud's
# --field-config values, tab separated. Firestore ends every index with __name__ in the direction
# of its last field and lists it so; a file entry without it means the same index.
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

# ------------------------------------------------------------------------- the sweep token

# Writes the job's X-Sweep-Token header into a private gcloud flags file ($1: headers on create,
# update-headers on update, the whole set each time), so that the sweep token appears on no
# command line and in no output. (Authorization carries the job's OIDC token.) The token is
# derived from the webhook secret (shared/core/tokens.py), read from Secret Manager.
write_sweep_flags() {
  local flag=$1 token
  local -a access=(gcloud secrets versions access latest "--secret=$WEBHOOK_SECRET_SECRET" "--project=$PROJECT")
  command_line "${access[@]}"
  say "+ $SHOWN | python3 -m shared.core.tokens sweep-token"
  say "#   -> $WORK/sweep-flags.json (a gcloud flags file): --$flag=$SWEEP_HEADER=<sweep token>"
  ((DRY_RUN)) && return 0
  # The module reads the secret from stdin first, so a WEBHOOK_SECRET in the operator's shell is not used.
  token="$("${access[@]}" | (cd "$ROOT" && python3 -m shared.core.tokens sweep-token))" ||
    die "could not derive the sweep token from the secret $WEBHOOK_SECRET_SECRET (see above)"
  [[ $token =~ ^[A-Za-z0-9_-]{40,}$ ]] || die "the sweep token derived from $WEBHOOK_SECRET_SECRET has an unexpected form"
  (umask 077 && printf '{"--%s": "%s=%s"}\n' "$flag" "$SWEEP_HEADER" "$token" >"$WORK/sweep-flags.json")
}
