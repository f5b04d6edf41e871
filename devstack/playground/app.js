// The playground as the app works: a guest signs in (Firebase Auth), creates a sketch with the ID
// token, and watches it live from its Firestore document, read under firestore.rules. Nothing asks
// `create_sketch` about a sketch once it is made: every change arrives as a snapshot.
// Bundled with the Firebase JS SDK by esbuild when the playground starts (devstack/playground).
import { initializeApp } from "firebase/app";
import {
  browserLocalPersistence,
  connectAuthEmulator,
  indexedDBLocalPersistence,
  initializeAuth,
  onAuthStateChanged,
  signInAnonymously,
  signOut,
} from "firebase/auth";
import {
  collection,
  connectFirestoreEmulator,
  doc,
  getDocs,
  getFirestore,
  limit,
  onSnapshot,
  orderBy,
  query,
  where,
} from "firebase/firestore";

const CONFIG = JSON.parse(document.getElementById("config").textContent);
const API = CONFIG.createSketch;
const RECENT = 10; // firestore.rules allow a page of at most 50
const FINAL = new Set(["complete", "failed"]);
const STATUS_TEXT = {
  image_pending: "Drawing the still…",
  image_complete: "The still is ready; asking for the video…",
  video_pending: "Bringing the still to life…",
  complete: "Done: the video is ready.",
  failed: "Failed.",
};

const app = initializeApp({ apiKey: CONFIG.apiKey, projectId: CONFIG.projectId });
// initializeAuth without a popup/redirect resolver: a guest needs none, and the page then loads no
// helper iframe from an auth domain.
const auth = initializeAuth(app, { persistence: [indexedDBLocalPersistence, browserLocalPersistence] });
connectAuthEmulator(auth, `http://${CONFIG.authEmulatorHost}`, { disableWarnings: true });
const db = getFirestore(app);
const [firestoreHost, firestorePort] = CONFIG.firestoreEmulatorHost.split(":");
connectFirestoreEmulator(db, firestoreHost, Number(firestorePort));
const sketches = collection(db, CONFIG.collection);

const $ = (id) => document.getElementById(id);
const form = $("sketch-form"), makeButton = $("make"), formError = $("form-error");
const current = $("current"), statusLine = $("status"), bar = $("progress");
const still = $("still"), video = $("video");

let user = null;         // the signed-in Firebase user
let followed = null;     // the id of the sketch on show
let unsubscribe = null;  // stops the live view of the sketch on show
let submitting = false;
// A submission whose answer never came keeps its key: sending the same body again with the same
// Idempotency-Key answers the sketch it may have made instead of paying for a second one.
let unanswered = null;   // {body, key}

// Firestore bills a read for every document a server snapshot or query delivers (an empty query
// answer costs one): the page counts them where a test can read them.
let reads = 0;
function countReads(n) {
  reads += n;
  $("reads").dataset.firestoreReads = String(reads);
  $("reads").textContent = `Firestore reads by this page: ${reads}`;
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// A call to create_sketch; an error carries the API's own words (error.message) and its status.
async function api(url, options) {
  const response = await fetch(url, { cache: "no-store", ...options });
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: described below */ }
  if (!response.ok) {
    const message = body && body.error && body.error.message
      ? body.error.message : `The service answered ${response.status}.`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function requestBody() {
  const [width, height] = $("shape").value.split("x").map(Number);
  const body = { prompt: $("prompt").value.trim(), width, height, duration: Number($("duration").value) };
  const negative = $("negative-prompt").value.trim(), motion = $("video-prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  if (motion) body.video_prompt = motion;
  return JSON.stringify(body);
}

function hashId() {
  try { return decodeURIComponent(location.hash.slice(1)); } catch { return ""; }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function submit(event) {
  event.preventDefault();
  if (submitting || !user) return;  // a second click while the first is on its way
  formError.textContent = "";
  const body = requestBody();
  if (!JSON.parse(body).prompt) {
    formError.textContent = "Please write a prompt first.";
    $("prompt").focus();
    return;
  }
  submitting = true;
  makeButton.disabled = true;
  makeButton.textContent = "Sending…";
  const key = unanswered && unanswered.body === body ? unanswered.key : newKey();
  unanswered = { body, key };
  try {
    // 409: the same key is still being handled (an earlier try of this very submission); ask again.
    for (let attempt = 0; ; attempt++) {
      try {
        const headers = {
          "Content-Type": "application/json",
          "Idempotency-Key": key,
          Authorization: `Bearer ${await user.getIdToken()}`,
        };
        const sketch = await api(API, { method: "POST", headers, body });
        unanswered = null;
        follow(sketch.id, sketch);
        loadRecent();
        return;
      } catch (error) {
        if (error.status === 409 && attempt < 5) { await sleep(1000); continue; }
        throw error;
      }
    }
  } catch (error) {
    if (error.status !== undefined) unanswered = null;  // a definite answer: the next try is new
    formError.textContent = error.status === undefined
      ? "Could not reach the sketch service. Press Make it again to retry (it will not make a second sketch)."
      : error.message;
  } finally {
    submitting = false;
    makeButton.disabled = !user;
    makeButton.textContent = "Make it";
  }
}

function stopFollowing() {
  if (unsubscribe) unsubscribe();
  unsubscribe = null;
  followed = null;
  current.hidden = true;
}

// Show one sketch, live: its document's snapshots carry every change the functions write.
function follow(id, known) {
  stopFollowing();
  followed = id;
  if (hashId() !== id) history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  current.hidden = false;
  current.dataset.sketchId = id;
  delete current.dataset.status;
  delete current.dataset.errorCode;
  still.removeAttribute("src");
  $("still-figure").hidden = true;
  video.removeAttribute("src");
  video.load();
  $("video-figure").hidden = true;
  $("error").textContent = "";
  statusLine.textContent = "Loading…";
  markCurrentInRecent();
  if (known) show(known);
  let final = known ? FINAL.has(known.status) : false;
  unsubscribe = onSnapshot(
    doc(sketches, id),
    (snapshot) => {
      if (!snapshot.metadata.fromCache) countReads(1);
      if (!snapshot.exists()) return;  // the rules let nobody read a missing sketch: never here
      const sketch = snapshot.data();
      show(sketch);
      if (FINAL.has(sketch.status) && !final) loadRecent();
      final = FINAL.has(sketch.status);
    },
    (error) => {
      // The listener has ended: the sketch is not this user's, or there is none (the rules say the
      // same for both), or Firestore gave up.
      current.dataset.errorCode = error.code;
      statusLine.textContent = error.code === "permission-denied"
        ? "This sketch is not yours to see, or there is none."
        : `Lost the live view of this sketch: ${error.message}`;
    },
  );
}

function show(sketch) {
  current.dataset.status = sketch.status;
  $("current-prompt").textContent = sketch.prompt;
  const text = STATUS_TEXT[sketch.status] || sketch.status;
  // Assigned only when it changes, so a screen reader announces each stage once.
  if (statusLine.textContent !== text) statusLine.textContent = text;
  const progress = Math.max(0, Math.min(100, Number(sketch.progress) || 0));
  bar.value = progress;
  bar.setAttribute("aria-valuetext", `${progress}%`);
  $("progress-text").textContent = `${progress}%`;
  const eta = sketch.eta_seconds;
  $("eta").textContent = !FINAL.has(sketch.status) && Number.isFinite(eta) ? `about ${Math.max(0, Math.round(eta))} s left` : "";
  // Set the media once: the still's link changes when its durable copy is stored, and a new src
  // would load it again.
  if (sketch.image_url && !still.getAttribute("src")) {
    still.alt = `Still for: ${sketch.prompt}`;
    still.src = sketch.image_url;
    $("still-figure").hidden = false;
  }
  if (sketch.status === "complete" && sketch.video_url && !video.getAttribute("src")) {
    video.setAttribute("aria-label", `Video for: ${sketch.prompt}`);
    video.src = sketch.video_url;
    $("video-figure").hidden = false;
    // Muted autoplay is allowed everywhere; play() also covers browsers that ignore the attribute.
    video.play().catch(() => { /* the controls are there to start it by hand */ });
  }
  $("error").textContent = sketch.status === "failed"
    ? sketch.error_message || "The sketch failed and the service gave no reason." : "";
}

// The gallery: the query firestore.rules allow a user (their own sketches, newest first, a page
// of at most 50), asked again when a sketch is made or finishes, or on Refresh.
let recentLoading = false;
async function loadRecent() {
  if (recentLoading || !user) return;
  recentLoading = true;
  $("recent-error").textContent = "";
  try {
    const page = await getDocs(
      query(sketches, where("user_id", "==", user.uid), orderBy("created_at", "desc"), limit(RECENT)),
    );
    countReads(Math.max(1, page.size));
    renderRecent(page.docs.map((d) => d.data()));
  } catch (error) {
    $("recent-error").textContent = `Could not load your recent sketches: ${error.message}`;
  } finally {
    recentLoading = false;
  }
}

function renderRecent(list) {
  $("recent-list").replaceChildren(...list.map((sketch) => {
    const item = document.createElement("li");
    item.dataset.testid = "recent-item";
    item.dataset.id = sketch.id;
    const button = document.createElement("button");
    button.type = "button";
    const prompt = document.createElement("span");
    prompt.className = "recent-prompt";
    prompt.textContent = sketch.prompt;
    const status = document.createElement("span");
    status.className = "recent-status";
    const when = sketch.created_at ? sketch.created_at.toDate().toLocaleTimeString() : "";
    status.textContent = `${sketch.status.replace("_", " ")}${when ? " · " + when : ""}`;
    button.append(prompt, status);
    button.addEventListener("click", () => {
      follow(sketch.id);
      current.scrollIntoView({ behavior: "smooth", block: "start" });
    });
    item.append(button);
    return item;
  }));
  $("recent-empty").hidden = list.length > 0;
  markCurrentInRecent();
}

function markCurrentInRecent() {
  for (const item of $("recent-list").children) {
    const button = item.querySelector("button");
    if (item.dataset.id === followed) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

async function signInAsGuest() {
  $("account-error").textContent = "";
  $("sign-in").disabled = true;
  try {
    await signInAnonymously(auth);
  } catch (error) {
    $("account-error").textContent = `Could not sign you in: ${error.message}`;
    $("sign-in").disabled = false;
  }
}

onAuthStateChanged(auth, (signedIn) => {
  user = signedIn;
  const account = $("account");
  $("sign-in").hidden = Boolean(user);
  $("sign-in").disabled = Boolean(user);
  $("sign-out").hidden = !user;
  makeButton.disabled = !user;
  $("refresh-recent").disabled = !user;
  if (user) {
    account.dataset.uid = user.uid;
    $("account-line").textContent = `Signed in as a guest (${user.uid}).`;
    loadRecent();
    if (hashId()) follow(hashId());
  } else {
    delete account.dataset.uid;
    $("account-line").textContent = "Not signed in: continue as a guest to make sketches.";
    stopFollowing();
    renderRecent([]);
  }
});

form.addEventListener("submit", submit);
$("sign-in").addEventListener("click", signInAsGuest);
$("sign-out").addEventListener("click", () => signOut(auth));
$("refresh-recent").addEventListener("click", loadRecent);
window.addEventListener("hashchange", () => {
  const id = hashId();
  if (user && id && id !== followed) follow(id);
});
