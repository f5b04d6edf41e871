# shellcheck shell=bash disable=SC2034,SC2154
# What deploy.sh says (sourced by it): what it is about to do, and at the end exactly what it
# deployed, function by function, and how its checks went.

auth_words() {
  if [[ $AUTH_MODE == none ]]; then
    printf 'AUTH_MODE=none: ANYONE may call create-sketch, without a login'
  else
    printf "AUTH_MODE=firebase: create-sketch requires 'Authorization: Bearer <Firebase ID token>' of project %s" "$PROJECT"
  fi
}

cors_words() {
  if [[ -n $CORS_ORIGINS ]]; then
    printf '%s' "$CORS_ORIGINS"
  else
    printf 'none: no browser origin may call'
  fi
}

app_check_words() {
  if [[ -n ${TUNING[APP_CHECK]+set} ]]; then
    printf 'APP_CHECK=%s (%s)' "${TUNING[APP_CHECK]}" "${TUNING_FROM[APP_CHECK]}"
  else
    printf 'APP_CHECK unset: off'
  fi
}

caps_lines() {
  local name
  for name in "${CAPS[@]}"; do
    [[ -n ${CAT_ROLE[$name]:-} ]] || continue
    say "  $name=$(cap_value "$name")"
  done
}

announce_mode() {
  say "Project: $PROJECT   Region: $REGION   Runtime: $RUNTIME"
  say "Auth mode: $(auth_words)"
  if [[ $AUTH_MODE == none ]]; then
    {
      printf '\n'
      printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
      printf '!! WARNING: --auth-mode none: create-sketch will accept requests from ANYONE\n'
      printf '!! on the internet, without a login. Every call spends Novita credit on your\n'
      printf '!! account, up to MAX_SKETCHES_PER_DAY_TOTAL=%s sketches per UTC day.\n' "${TUNING[MAX_SKETCHES_PER_DAY_TOTAL]}"
      printf '!! Use it only for a short demo; redeploy with --auth-mode firebase.\n'
      printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
    } >&2
  fi
  say "CORS allowed origins: $(cors_words)"
  say "App Check: $(app_check_words)"
  say "Secrets: NOVITA_API_KEY <- $API_KEY_SECRET, WEBHOOK_SECRET <- $WEBHOOK_SECRET_SECRET (Secret Manager, latest)"
  say "Runs as: $RUNTIME_SA   Builds as: $BUILD_SA   Pushes as: $PUSH_SA"
  say "Media bucket: gs://$BUCKET"
  say "Steps: $STEPS_TOPIC -> $STEPS_SUBSCRIPTION (ack deadline ${ACK_DEADLINE_SECONDS}s, retry" \
    "$MIN_RETRY_DELAY..$MAX_RETRY_DELAY, $MAX_DELIVERY_ATTEMPTS deliveries) -> $DEAD_LETTER_TOPIC -> $DEAD_LETTER_SUBSCRIPTION"
  if ((DRY_RUN)); then
    say "DRY RUN: printing the commands; none of them is run."
  fi
}

summary() {
  local title="Deployed" created_title="Created" updated_title="Updated" item fn note
  if ((DRY_RUN)); then
    title="Dry run finished: nothing was changed"
    created_title="Would create (on a first deploy)"
    updated_title="Would update"
  fi
  say ""
  say "== $title"
  say "$created_title:"
  for item in "${CREATED[@]}"; do say "  - $item"; done
  ((${#CREATED[@]})) || say "  (nothing: everything existed)"
  say "$updated_title:"
  for item in "${UPDATED[@]}"; do say "  - $item"; done
  say "Functions deployed: ${DEPLOYED[*]}"
  say "IAM role bindings added or already there: $BINDINGS"
  say ""
  for fn in "${FUNCTIONS[@]}"; do
    say "$fn: ${URL[$fn]:-(not deployed)}"
    say "    $(door_title "$fn")"
    say "    ${SHAPE[$fn]:-}"
    say "    environment, as deployed:"
    print_env "${DEPLOYED_ENV[$fn]:-}"
  done
  say ""
  say "Auth mode:      $(auth_words)"
  say "CORS origins:   $(cors_words)"
  say "App Check:      $(app_check_words)"
  say "Caps (per UTC day, but MAX_SKETCHES_IN_PROGRESS: unfinished at once):"
  caps_lines
  say "Media bucket:   gs://$BUCKET"
  say "Recovery sweep: every minute ($SCHEDULER_JOB, $REGION) -> ${URL[$STEPS_FN]:-}?action=sweep as $PUSH_SA"
  if ((${#ENV_NOTES[@]})); then
    say "Variables not set by this deploy's flags or file:"
    for note in "${ENV_NOTES[@]}"; do say "  $note"; done
  fi
  say ""
  if ((SKIP_CHECKS)); then
    say "End-of-deploy checks: skipped (--skip-checks); nothing proves this deployment works"
  elif ((DRY_RUN)); then
    say "End-of-deploy checks: not run (dry run); shown above"
  else
    say "End-of-deploy checks:"
    for item in "${CHECK_RESULTS[@]}"; do say "  $item"; done
    ((CHECK_FAILURES == 0)) || say "  $CHECK_FAILURES check(s) FAILED: see docs/deploying.md, \"Checks\", for what to do"
  fi
  cat <<EOF

Novita: nothing to set up. Each request registers its own webhook URL
  (${URL[$WEBHOOK_FN]:-}?sketch=...&stage=...&token=...); the API key is the secret $API_KEY_SECRET.

Frontend: call ${URL[$CREATE_FN]:-}
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
