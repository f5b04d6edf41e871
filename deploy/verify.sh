# shellcheck shell=bash disable=SC2034,SC2154
# The end-of-deploy checks (sourced by deploy.sh): they prove, through the real services, that
# the deployment works, and say plainly which one did not pass. None of them stops the deploy:
# deploy.sh exits non-zero after its summary when one failed.

CHECK_RESULTS=()
CHECK_FAILURES=0
# Bounds of the waits (each poll sleeps between two looks): the job's attempt, then its log line.
readonly SCHEDULER_POLLS=18 SCHEDULER_POLL_SECONDS=5 LOG_POLLS=12 LOG_POLL_SECONDS=10

check_passed() {
  CHECK_RESULTS+=("passed: $*")
  say "check passed: $*"
}

check_failed() {
  CHECK_RESULTS+=("FAILED: $*")
  CHECK_FAILURES=$((CHECK_FAILURES + 1))
  say "check FAILED: $*"
}

# The last lines of gcloud's message in file $1, on one line.
last_words() { tail -n 3 "$1" 2>/dev/null | tr '\n' ' ' | cut -c1-400; }

# 1. A download-token URL serves an object of the bucket: a small object written with a fresh
# token in its Firebase metadata is fetched through Firebase Storage (which checks the token, not
# the security rules) and compared byte for byte, then deleted.
verify_token_url() {
  local stamp token object url status
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  token="<uuid>"
  ((DRY_RUN)) || token=$(python3 -c 'import uuid; print(uuid.uuid4())')
  object="deploy-check/$stamp.txt"
  url="https://firebasestorage.googleapis.com/v0/b/$BUCKET/o/${object//\//%2F}?alt=media&token=$token"
  printf 'sketch machine deploy check %s\n' "$stamp" >"$WORK/deploy-check.txt"
  local -a put=(gcloud storage cp "$WORK/deploy-check.txt" "gs://$BUCKET/$object" "--project=$PROJECT"
    "--custom-metadata=firebaseStorageDownloadTokens=$token")
  local -a fetch=(curl -sS --max-time 60 -o "$WORK/deploy-check.fetched" -w '%{http_code}' "$url")
  local -a remove=(gcloud storage rm "gs://$BUCKET/$object" "--project=$PROJECT")
  show "${put[@]}"
  if ((DRY_RUN)); then
    show "${fetch[@]}"
    show "${remove[@]}"
    return 0
  fi
  if ! "${put[@]}" >/dev/null 2>"$WORK/check.err"; then
    check_failed "token URL: could not write gs://$BUCKET/$object: $(last_words "$WORK/check.err")"
    return 0
  fi
  show "${fetch[@]}"
  status=$("${fetch[@]}" 2>"$WORK/check.err") || status="no answer ($(last_words "$WORK/check.err"))"
  if [[ $status == 200 ]] && cmp -s "$WORK/deploy-check.txt" "$WORK/deploy-check.fetched"; then
    check_passed "token URL: gs://$BUCKET/$object was served through its Firebase download-token URL, byte for byte"
  elif [[ $status == 200 ]]; then
    check_failed "token URL: Firebase Storage answered 200 with other bytes than gs://$BUCKET/$object holds"
  else
    check_failed "token URL: Firebase Storage answered $status for gs://$BUCKET/$object (is the bucket linked to Firebase Storage, and may Firebase Storage's service agent read it?)"
  fi
  show "${remove[@]}"
  "${remove[@]}" >/dev/null 2>"$WORK/check.err" ||
    warn "could not delete gs://$BUCKET/$object: $(last_words "$WORK/check.err")"
}

# What a google.rpc code in a Cloud Scheduler attempt's status means for the sweep's call.
rpc_meaning() {
  case $1 in
    3) printf 'INVALID_ARGUMENT: the steps door answered 400' ;;
    4) printf 'DEADLINE_EXCEEDED: no answer within %s' "$SWEEP_ATTEMPT_DEADLINE" ;;
    5) printf 'NOT_FOUND: the door answered 404; is %s deployed with WEBHOOK_DOOR=private?' "$STEPS_FN" ;;
    7) printf 'PERMISSION_DENIED: Cloud Run refused the job (403); does %s hold roles/run.invoker on %s?' "$PUSH_SA" "$STEPS_FN" ;;
    16) printf 'UNAUTHENTICATED: 401; the sweep token (X-Sweep-Token) or the OIDC token was refused' ;;
    13 | 14) printf 'the steps door answered 5xx; read its logs' ;;
    *) printf 'see https://cloud.google.com/scheduler/docs/reference/rpc/google.rpc#code' ;;
  esac
}

# 2. The recovery sweep runs: the job is run once, its last attempt is awaited (a bounded wait)
# and its outcome reported (no status code: the function answered 2xx); then the steps door's own
# log line "sweep finished" says what the sweep did.
verify_sweep() {
  local start line code="" time="" poll=0 svc=${SERVICE[$STEPS_FN]:-$STEPS_FN}
  local -a trigger=(gcloud scheduler jobs run "$SCHEDULER_JOB" "--project=$PROJECT" "--location=$REGION")
  local -a look=(gcloud scheduler jobs describe "$SCHEDULER_JOB" "--project=$PROJECT" "--location=$REGION"
    '--format=value(status.code,lastAttemptTime)')
  start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local filter="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"$svc\" AND jsonPayload.message=\"sweep finished\" AND timestamp>=\"$start\""
  local -a logs=(gcloud logging read "$filter" "--project=$PROJECT" --limit=1 --order=desc --format=json)
  show "${trigger[@]}"
  if ((DRY_RUN)); then
    show "${look[@]}"
    say "#   (every ${SCHEDULER_POLL_SECONDS} s, at most $((SCHEDULER_POLLS * SCHEDULER_POLL_SECONDS)) s, until lastAttemptTime is after the run)"
    show "${logs[@]}"
    say "#   (every ${LOG_POLL_SECONDS} s, at most $((LOG_POLLS * LOG_POLL_SECONDS)) s, until the line is there)"
    return 0
  fi
  if ! "${trigger[@]}" >/dev/null 2>"$WORK/check.err"; then
    check_failed "sweep: gcloud scheduler jobs run $SCHEDULER_JOB failed: $(last_words "$WORK/check.err")"
    return 0
  fi
  show "${look[@]}"
  while ((poll < SCHEDULER_POLLS)); do
    poll=$((poll + 1))
    if line=$("${look[@]}" 2>"$WORK/check.err"); then
      if [[ $line == *$'\t'* ]]; then
        code=${line%%$'\t'*} time=${line#*$'\t'}
      elif [[ $line =~ ^[0-9]{4}- ]]; then
        code="" time=$line
      else
        code=$line time=""
      fi
      # RFC 3339 in UTC: to the second, the strings compare as the times do.
      [[ -n $time && ! ${time:0:19} < ${start:0:19} ]] && break
    fi
    time=""
    sleep "$SCHEDULER_POLL_SECONDS"
  done
  if [[ -z $time ]]; then
    check_failed "sweep: Cloud Scheduler made no attempt of $SCHEDULER_JOB within $((SCHEDULER_POLLS * SCHEDULER_POLL_SECONDS)) s of 'jobs run' (started $start)"
    return 0
  fi
  if [[ -n $code && $code != 0 ]]; then
    check_failed "sweep: the attempt of $SCHEDULER_JOB at $time failed with code $code ($(rpc_meaning "$code"))"
    return 0
  fi
  check_passed "sweep: Cloud Scheduler ran $SCHEDULER_JOB at $time and $STEPS_FN answered 2xx"
  show "${logs[@]}"
  local report
  for ((poll = 0; poll < LOG_POLLS; poll++)); do
    if report=$("${logs[@]}" 2>"$WORK/check.err" | python3 -c '
import json, sys
entries = json.load(sys.stdin)
if not entries:
    sys.exit(3)
p = entries[0].get("jsonPayload") or {}
errors = p.get("errors") or []
fields = (p.get("examined"), p.get("changed"), len(errors), str(p.get("more")).lower())
line = "examined %s, changed %s, errors %s, more %s" % fields
if errors:
    line += "; first errors: " + " | ".join(str(e)[:160] for e in errors[:3])
print(line)
'); then
      check_passed "sweep log: $svc logged 'sweep finished': $report"
      return 0
    fi
    sleep "$LOG_POLL_SECONDS"
  done
  check_failed "sweep log: no 'sweep finished' line of $svc since $start within $((LOG_POLLS * LOG_POLL_SECONDS)) s (gcloud logging read '$filter' --project=$PROJECT)"
}

# 3. Who may call: the public services have the invoker IAM check off, the private one has it on.
verify_invoker_checks() {
  local fn svc access status
  for fn in "${FUNCTIONS[@]}"; do
    svc=${SERVICE[$fn]:-$fn}
    access=$(access_of "$fn")
    status=0
    invoker_check_disabled "$svc" || status=$?
    ((DRY_RUN)) && continue
    if ((status == 2)); then
      check_failed "invoker: could not read the invoker IAM check of $svc: $(last_words "$WORK/invoker.err")"
    elif [[ $access == private ]] && ((status == 0)); then
      check_failed "invoker: $svc ($fn) has the invoker IAM check OFF: the private door is open to anyone; run gcloud run services update $svc --region=$REGION --invoker-iam-check"
    elif [[ $access == private ]]; then
      check_passed "invoker: $svc ($fn) keeps the invoker IAM check on (private)"
    elif ((status == 0)); then
      check_passed "invoker: $svc ($fn) has the invoker IAM check off (public)"
    else
      check_failed "invoker: $svc ($fn) has the invoker IAM check ON: nobody outside can call it; run gcloud run services update $svc --region=$REGION --no-invoker-iam-check"
    fi
  done
}
