# shellcheck shell=bash disable=SC2034,SC2154
# What deploy.sh makes sure of before it changes anything (sourced by it): the sources, the tools,
# the names of what it deploys, the steps' topology, the project's APIs, Firestore database,
# secrets and number; and the staging of the functions' sources.

check_sources() {
  local file
  for file in functions/$CREATE_ENTRY/main.py functions/$WEBHOOK_ENTRY/main.py shared/__init__.py \
    requirements.txt .gcloudignore; do
    [[ -f $ROOT/$file ]] || die "source file missing: $ROOT/$file"
  done
  [[ -n $STAGE_ONLY ]] && return 0
  [[ -f $ROOT/$INDEXES_FILE ]] || die "source file missing: $ROOT/$INDEXES_FILE"
  if ! ((SKIP_RULES)); then
    for file in firestore.rules storage.rules; do
      [[ -f $ROOT/$file ]] || die "source file missing: $ROOT/$file (or pass --skip-rules)"
    done
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

# The two source folders: both webhook doors deploy the novita_webhook one.
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
  command -v python3 >/dev/null 2>&1 ||
    die "python3 not found on PATH (it reads shared/core/config.py, shared/pipeline/topology.py and derives the sweep token)"
}

# The service accounts and the bucket, from the flags or their defaults.
resolve_names() {
  # Service accounts of a domain-scoped project (example.com:name) live in name.example.com.
  local sa_domain="$PROJECT.iam.gserviceaccount.com"
  [[ $PROJECT != *:* ]] || sa_domain="${PROJECT#*:}.${PROJECT%%:*}.iam.gserviceaccount.com"
  SA_DOMAIN=$sa_domain
  RUNTIME_SA=${RUNTIME_SA:-$RUNTIME_SA_ID@$sa_domain}
  BUILD_SA=${BUILD_SA:-$BUILD_SA_ID@$sa_domain}
  PUSH_SA=${PUSH_SA:-$PUSH_SA_ID@$sa_domain}
  BUCKET=${BUCKET:-$PROJECT-sketch-media}
  # The rule the functions apply to MEDIA_BUCKET (shared/core/config.py).
  [[ $BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] ||
    die "'$BUCKET' is not a Cloud Storage bucket name (lower-case letters, digits, - _ .); pass --bucket NAME"
}

# The steps' Pub/Sub topology, from the one module that defines it (the local stack builds the
# same from it). Each line must be a plain NAME=value before it is evaluated.
read_topology() {
  local assignments line name
  assignments="$(cd "$ROOT" && python3 -m shared.pipeline.topology shell)" || die "python3 -m shared.pipeline.topology shell failed (see above)"
  while IFS= read -r line; do
    [[ $line =~ ^[A-Z_]+=[A-Za-z0-9._-]+$ ]] || die "unexpected line from shared.pipeline.topology: '$line'"
  done <<<"$assignments"
  eval "$assignments"
  for name in "${TOPOLOGY[@]}"; do
    [[ -n ${!name:-} ]] || die "shared.pipeline.topology did not give $name"
  done
}

check_apis() {
  local -a needed=(cloudfunctions run cloudbuild artifactregistry secretmanager firestore pubsub cloudscheduler
    storage firebasestorage iam cloudresourcemanager)
  ((SKIP_RULES)) || needed+=(firebaserules)
  ((SKIP_CHECKS)) || needed+=(logging)
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

# The project number names the Pub/Sub service agent, and App Check tokens name it
# (FIREBASE_PROJECT_NUMBER).
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
