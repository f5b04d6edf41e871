#!/usr/bin/env bash
# Deploys the sketch machine to Google Cloud and creates or updates everything it runs on; `main`
# at the bottom is the ordered list. Safe to run again: whatever exists is updated or left as it
# is, never created twice. Run ./deploy.sh --help for the flags; docs/deploying.md explains it.
# The gcloud and REST plumbing lives in deploy/*.sh; this file is the resources.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ROOT

((BASH_VERSINFO[0] > 4 || BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] >= 4)) ||
  { echo "deploy.sh: error: bash 4.4 or newer is needed (this is $BASH_VERSION)" >&2; exit 1; }

# The deployed functions: Cloud Functions name, Python entry point (= folder under functions/).
# Both webhook doors are the same source, told apart by WEBHOOK_DOOR.
readonly WEBHOOK_FN="novita-webhook" STEPS_FN="novita-webhook-steps" WEBHOOK_ENTRY="novita_webhook"
readonly CREATE_FN="create-sketch" CREATE_ENTRY="create_sketch"
readonly -a FUNCTIONS=("$WEBHOOK_FN" "$STEPS_FN" "$CREATE_FN")
readonly RUNTIME="python312"
# Only used on the very first deploy of novita-webhook, whose URL is not known before it
# exists (see deploy_webhook). It must be a well-formed URL, or the function would not start.
readonly PLACEHOLDER_WEBHOOK_URL="https://novita-webhook.invalid/"
readonly RULES_API="https://firebaserules.googleapis.com/v1"
readonly FIREBASE_STORAGE_API="https://firebasestorage.googleapis.com/v1beta"
readonly INDEXES_FILE="firestore.indexes.json"
# The ids of the service accounts deploy.sh creates when none is given.
readonly RUNTIME_SA_ID="sketch-machine" BUILD_SA_ID="sketch-machine-build" PUSH_SA_ID="sketch-machine-push"
# The recovery sweep: every minute; a run takes at most shared/pipeline/recovery.py's SWEEP_SECONDS (100 s).
readonly SCHEDULER_JOB="sketch-recovery-sweep" SWEEP_SCHEDULE="* * * * *" SWEEP_ATTEMPT_DEADLINE="180s"
# The header of the sweep token (Authorization carries the job's OIDC token).
readonly SWEEP_HEADER="X-Sweep-Token"
# Documents that Firestore deletes once their `expires_at` has passed: the idempotency records
# (shared/spending/idempotency.py) and the daily counters (shared/spending/breaker.py) of the `sketches` collection.
readonly TTL_FIELD="expires_at"
readonly -a TTL_COLLECTION_GROUPS=(sketches_idempotency sketches_daily)
# The shell assignments `python3 -m shared.pipeline.topology shell` must print: the steps' Pub/Sub topology.
readonly -a TOPOLOGY=(STEPS_TOPIC DEAD_LETTER_TOPIC STEPS_SUBSCRIPTION DEAD_LETTER_SUBSCRIPTION STEP_ACTION
  DEAD_LETTER_ACTION ACK_DEADLINE_SECONDS FUNCTION_TIMEOUT_SECONDS MIN_RETRY_DELAY MAX_RETRY_DELAY
  MAX_DELIVERY_ATTEMPTS)

# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"
# shellcheck source=deploy/args.sh
source "$ROOT/deploy/args.sh"
# shellcheck source=deploy/env.sh
source "$ROOT/deploy/env.sh"
# shellcheck source=deploy/preflight.sh
source "$ROOT/deploy/preflight.sh"
# shellcheck source=deploy/verify.sh
source "$ROOT/deploy/verify.sh"
# shellcheck source=deploy/report.sh
source "$ROOT/deploy/report.sh"

# ------------------------------------------------------------------------ service accounts

# Runtime (the three functions): Firestore (the project's only database; IAM has no finer grain for
# it), and per resource below: the two secrets, publishing steps, the media bucket. Logs go to
# stdout, which needs no role. Build: roles/run.builder, Google's role for building source-deployed
# functions (logs, Artifact Registry, reading the uploaded source); since July 2024 new projects'
# default build account may lack it. Push: the identity of Pub/Sub's pushes and of the sweep job
# (its only role, run.invoker on the private door, comes with that door); Pub/Sub's service agent
# mints its OIDC tokens, which projects whose agent predates April 8, 2021 need granted.
deploy_service_accounts() {
  say ""
  say "== Service accounts"
  ensure_service_account "$RUNTIME_SA" "Sketch machine functions"
  ensure_service_account "$BUILD_SA" "Sketch machine builds"
  ensure_service_account "$PUSH_SA" "Sketch machine pushes and sweep"
  bind gcloud projects add-iam-policy-binding "$PROJECT" "--member=serviceAccount:$RUNTIME_SA" \
    --role=roles/datastore.user --condition=None
  bind gcloud projects add-iam-policy-binding "$PROJECT" "--member=serviceAccount:$BUILD_SA" \
    --role=roles/run.builder --condition=None
  local name
  for name in "$API_KEY_SECRET" "$WEBHOOK_SECRET_SECRET"; do
    bind gcloud secrets add-iam-policy-binding "$name" "--project=$PROJECT" \
      "--member=serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor
  done
  bind gcloud iam service-accounts add-iam-policy-binding "$PUSH_SA" "--project=$PROJECT" \
    "--member=serviceAccount:$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator
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

# ------------------------------------------------------------------------ security rules

# The browser's direct access: firestore.rules (a user reads their own sketches) for the
# (default) database, and storage.rules (no client reads or writes anything) for the bucket.
deploy_rules() {
  say ""
  say "== Security rules (firestore.rules, storage.rules)"
  release_rules firestore.rules cloud.firestore
  release_rules storage.rules "firebase.storage/$BUCKET"
}

# ----------------------------------------------------------------------------- Firestore

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

# ------------------------------------------------------------------------------ functions

# novita-webhook, the public door: Novita's deliveries only. It needs its own public URL in
# WEBHOOK_URL (it registers it with Novita), but a gen2 function's URL exists only once the
# function does. So:
#   - if the function already exists, its URL is read first and it is deployed once with it;
#   - on the very first deploy it is deployed with a placeholder URL, its URL is read back and
#     it is deployed again with the real one. No sketch can exist in between (create-sketch is
#     deployed after), so the placeholder is never handed to Novita.
# Only gcloud's "not found" means a first deploy: were a live webhook redeployed with the
# placeholder because it could not be described, every sketch in flight would lose its webhook.
# A delivery is answered at once (the work runs as steps), hence 60 s and 512 MiB.
deploy_webhook() {
  say ""
  say "== $WEBHOOK_FN: the public door (entry point $WEBHOOK_ENTRY, WEBHOOK_DOOR=public)"
  local known=""
  if ((DRY_RUN)); then
    say "# dry run: shown as on a first deploy; when $WEBHOOK_FN exists already, it is deployed once, with its URL"
  fi
  if function_url "$WEBHOOK_FN"; then
    known=$FN_URL
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" 60s 512Mi "$known"
  else
    say "$WEBHOOK_FN does not exist yet (or has no URL): first deploy with a placeholder WEBHOOK_URL"
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" 60s 512Mi "$PLACEHOLDER_WEBHOOK_URL"
  fi
  function_url "$WEBHOOK_FN" || die "could not read the URL of $WEBHOOK_FN after deploying it"
  if [[ $FN_URL != "$known" ]]; then
    say "$WEBHOOK_FN is at $FN_URL: deploying it again with WEBHOOK_URL=$FN_URL"
    deploy_function "$WEBHOOK_FN" "$WEBHOOK_ENTRY" 60s 512Mi "$FN_URL"
  fi
  URL[$WEBHOOK_FN]=$FN_URL
}

# novita-webhook-steps, the private door (same source): Pub/Sub's pushes and the sweep, behind
# Cloud Run IAM, which lets in only the push account (roles/run.invoker on this service alone).
# It registers the public door's URL with Novita for the video. Its timeout lies between a step's
# own deadline and the subscription's ack deadline (shared/pipeline/topology.py): a step is never
# pushed again while it runs; it holds up to a still of 10 MiB per concurrent request, hence 1 GiB.
deploy_steps_door() {
  say ""
  say "== $STEPS_FN: the private door (entry point $WEBHOOK_ENTRY, WEBHOOK_DOOR=private)"
  deploy_function "$STEPS_FN" "$WEBHOOK_ENTRY" "${FUNCTION_TIMEOUT_SECONDS}s" 1Gi "${URL[$WEBHOOK_FN]}"
  bind gcloud functions add-invoker-policy-binding "$STEPS_FN" "--region=$REGION" "--project=$PROJECT" \
    "--member=serviceAccount:$PUSH_SA"
  function_url "$STEPS_FN" || die "could not read the URL of $STEPS_FN after deploying it"
  URL[$STEPS_FN]=$FN_URL
}

# The push subscriptions call the private door with an OIDC token of the push account (audience:
# the door's URL), so they come after it, and before create-sketch (a step published to a topic
# without a subscription is lost). The dead-letter one comes first for the same reason. Each step
# also carries the project's own signature (shared/pipeline/topology.py), which the door checks.
# Pub/Sub's service agent must be able to take a message off the steps subscription to dead-letter
# it; without that grant (and the publisher one above) dead-lettering silently never happens.
deploy_subscriptions() {
  say ""
  say "== Pub/Sub push subscriptions (to $STEPS_FN, as $PUSH_SA)"
  local steps_url=${URL[$STEPS_FN]}
  local -a push=("--push-auth-service-account=$PUSH_SA" "--push-auth-token-audience=$steps_url"
    "--ack-deadline=$ACK_DEADLINE_SECONDS" "--min-retry-delay=$MIN_RETRY_DELAY" "--max-retry-delay=$MAX_RETRY_DELAY"
    --expiration-period=never)
  ensure_subscription "$DEAD_LETTER_SUBSCRIPTION" "$DEAD_LETTER_TOPIC" \
    "--push-endpoint=$steps_url?action=$DEAD_LETTER_ACTION" "${push[@]}"
  ensure_subscription "$STEPS_SUBSCRIPTION" "$STEPS_TOPIC" "--push-endpoint=$steps_url?action=$STEP_ACTION" \
    "${push[@]}" "--dead-letter-topic=$DEAD_LETTER_TOPIC" "--max-delivery-attempts=$MAX_DELIVERY_ATTEMPTS"
  bind gcloud pubsub subscriptions add-iam-policy-binding "$STEPS_SUBSCRIPTION" "--project=$PROJECT" \
    "--member=serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.subscriber
}

# create-sketch, the public API; deployed last of the three, when everything a sketch needs is up.
deploy_create() {
  say ""
  say "== $CREATE_FN (entry point $CREATE_ENTRY)"
  deploy_function "$CREATE_FN" "$CREATE_ENTRY" 60s 512Mi "${URL[$WEBHOOK_FN]}"
  function_url "$CREATE_FN" || die "could not read the URL of $CREATE_FN after deploying it"
  URL[$CREATE_FN]=$FN_URL
}

# ---------------------------------------------------------------------------- the sweep

# Every minute: POST novita-webhook-steps?action=sweep with an OIDC token of the push account
# (Cloud Run IAM lets it in) and the sweep token in X-Sweep-Token (the function checks it). An
# update removes the Authorization header earlier versions set. --format=none: gcloud would print
# the job, header included. Rotating the webhook secret needs a run of deploy.sh.
deploy_scheduler() {
  say ""
  say "== Recovery sweep: Cloud Scheduler job $SCHEDULER_JOB"
  local steps_url=${URL[$STEPS_FN]}
  local -a settings=("--project=$PROJECT" "--location=$REGION" "--schedule=$SWEEP_SCHEDULE" --time-zone=Etc/UTC
    "--uri=$steps_url?action=sweep" --http-method=post "--attempt-deadline=$SWEEP_ATTEMPT_DEADLINE"
    "--oidc-service-account-email=$PUSH_SA" "--oidc-token-audience=$steps_url"
    "--flags-file=$WORK/sweep-flags.json" --format=none)
  if describe "Cloud Scheduler job $SCHEDULER_JOB" gcloud scheduler jobs describe "$SCHEDULER_JOB" \
    "--project=$PROJECT" "--location=$REGION" "--format=value(name)"; then
    write_sweep_flags update-headers
    run gcloud scheduler jobs update http "$SCHEDULER_JOB" "${settings[@]}" --remove-headers=Authorization
    UPDATED+=("Cloud Scheduler job $SCHEDULER_JOB")
  else
    write_sweep_flags headers
    run gcloud scheduler jobs create http "$SCHEDULER_JOB" "${settings[@]}"
    CREATED+=("Cloud Scheduler job $SCHEDULER_JOB")
  fi
}

# ---------------------------------------------------------------------------- the proof

verify_deployment() {
  say ""
  if ((SKIP_CHECKS)); then
    say "== Checks of the deployment: skipped (--skip-checks)"
    return 0
  fi
  say "== Checks of the deployment"
  verify_token_url
  verify_sweep
  verify_invoker_checks
}

# ------------------------------------------------------------------------------ main

main() {
  parse_args "$@"
  validate_args
  check_sources
  if [[ -n $STAGE_ONLY ]]; then
    stage_all "$STAGE_ONLY"
    say "staged $STAGE_ONLY/$WEBHOOK_ENTRY (both webhook doors) and $STAGE_ONLY/$CREATE_ENTRY"
    return 0
  fi
  check_prerequisites
  resolve_names
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/sketch-deploy.XXXXXX")"
  trap 'rm -rf -- "$WORK"' EXIT
  read_topology
  check_environment
  announce_mode
  say ""
  say "== Checks"
  check_apis
  check_firestore
  check_secrets
  read_project_number
  plan_environment
  print_plan
  stage_all "$WORK"
  say "staged the sources in $WORK (removed on exit)"
  # What gets created or updated, in order.
  deploy_service_accounts
  deploy_bucket
  ((SKIP_RULES)) || deploy_rules
  deploy_indexes
  deploy_ttls
  deploy_topics
  deploy_webhook
  deploy_steps_door
  deploy_subscriptions
  deploy_create
  deploy_scheduler
  verify_deployment
  summary
  ((CHECK_FAILURES == 0)) || exit 1
}

FN_URL=""
FOUND=""
SHOWN=""
SHOWN_TOKEN=""
HTTP_STATUS=""
WAITING_FOR=""
WORK=""
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
