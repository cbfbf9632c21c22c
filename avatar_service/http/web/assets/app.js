// The avatar page: pick a photo, choose the options, follow the job live, keep the result.
// Plain script, no build step; everything talks to the service's own JSON API.
"use strict";

(function () {
  const ACCEPTED_TYPES = ["image/jpeg", "image/png", "image/webp"];
  const KEY_STORAGE = "avatarService.apiKey";
  const RECENT_STORAGE = "avatarService.recent";
  const JOB_STORAGE = "avatarService.job"; // the job in flight, taken up again after a reload
  const RECENT_MAX = 12;
  const POLL_MS = 1000;
  const SIZE_PRESETS = [
    { id: "512x512", width: 512, height: 512, label: "512 × 512" },
    { id: "768x768", width: 768, height: 768, label: "768 × 768" },
    { id: "1024x1024", width: 1024, height: 1024, label: "1024 × 1024" },
    { id: "768x1024", width: 768, height: 1024, label: "768 × 1024 portrait" },
  ];
  // What a person should read for each error code the API can answer; {placeholders} are filled
  // from the error's details. Codes not listed here show the service's own message.
  const SENTENCES = {
    missing_file: "Choose a photo first.",
    empty_file: "This file is empty; choose another photo.",
    invalid_image: "This file could not be read as a photo; choose another JPEG, PNG or WebP.",
    unsupported_image_type: "This file is not a JPEG, PNG or WebP photo; choose another one.",
    photo_too_large: "This photo is too large: at most {maxSize}.",
    payload_too_large: "This photo is far too large for the service.",
    image_not_found: "The service no longer has this photo; press Generate again to send it anew.",
    job_not_found: "The service no longer knows this job.",
    job_cancelled: "The job was cancelled.",
    job_already_ended: "The job had already ended.",
    service_busy: "The service is busy right now; try again in a few seconds.",
    comfyui_unavailable: "The image server (ComfyUI) cannot be reached right now; try again shortly.",
    job_timeout: "The avatar took too long to make and was stopped; try again, perhaps smaller.",
    comfyui_interrupted: "The image server stopped this job; try again.",
    comfyui_lost_prompt: "The image server lost this job (it probably restarted); try again.",
    unauthorized: "This service needs a valid API key.",
    forbidden: "This job belongs to another API key.",
    rate_limited: "Too many requests for now; try again in {retryAfter} seconds.",
    no_face_found:
      "No face was found in this photo, and this service needs one: choose a photo where one " +
      "face looks at the camera.",
    several_faces: "This photo shows several faces, and this service takes one: choose a photo " +
      "of one person.",
  };
  const FIELD_OF_CODE = {
    missing_file: "photo",
    empty_file: "photo",
    invalid_image: "photo",
    unsupported_image_type: "photo",
    photo_too_large: "photo",
    payload_too_large: "photo",
    image_too_small: "photo",
    image_too_many_pixels: "photo",
    image_not_found: "photo",
    no_face_found: "photo",
    several_faces: "photo",
  };
  const FIELD_OF_INPUT = {
    imageName: "photo",
    gender: "gender",
    style: "style",
    width: "size",
    height: "size",
    seed: "seed",
  };

  const body = document.body;
  const limits = {
    maxBytes: Number(body.dataset.maxUploadBytes),
    minSide: Number(body.dataset.minSide),
    maxSide: Number(body.dataset.maxSide),
    step: Number(body.dataset.sideStep),
  };
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("generate-form"),
    drop: $("drop-zone"),
    dropHint: $("drop-hint"),
    photoInput: $("photo-input"),
    cameraInput: $("camera-input"),
    photoPreview: $("photo-preview"),
    photoFrame: $("photo-frame"),
    framingOverlay: $("framing-overlay"),
    cropShade: $("crop-shade"),
    cropBox: $("crop-box"),
    faceBox: $("face-box"),
    framingText: $("framing-text"),
    photoName: $("photo-name"),
    maxSize: $("max-size"),
    genderOptions: $("gender-options"),
    styleSelect: $("style-select"),
    styleDescription: $("style-description"),
    sizeOptions: $("size-options"),
    customSize: $("custom-size"),
    widthInput: $("width-input"),
    heightInput: $("height-input"),
    seedInput: $("seed-input"),
    generate: $("generate-button"),
    emptyNote: $("empty-note"),
    progressBox: $("progress-box"),
    statusText: $("status-text"),
    stepBar: $("step-bar"),
    stepText: $("step-text"),
    livePreview: $("live-preview"),
    cancel: $("cancel-button"),
    resultBox: $("result-box"),
    resultImage: $("result-image"),
    resultCaption: $("result-caption"),
    download: $("download-link"),
    again: $("again-button"),
    recentBox: $("recent-box"),
    recentList: $("recent-list"),
    clearRecent: $("clear-recent"),
    standinBanner: $("standin-banner"),
    readyBanner: $("ready-banner"),
    keyButton: $("key-button"),
    keyDialog: $("key-dialog"),
    keyForm: $("key-form"),
    keyInput: $("key-input"),
    keyReason: $("key-reason"),
    keyError: $("key-error"),
    keyForget: $("key-forget"),
    keyCancel: $("key-cancel"),
  };
  const errorBoxes = {
    photo: $("photo-error"),
    gender: $("gender-error"),
    style: $("style-error"),
    size: $("size-error"),
    seed: $("seed-error"),
    form: $("form-error"),
    job: $("job-error"),
  };
  const invalidTargets = {
    photo: () => [el.photoInput],
    style: () => [el.styleSelect],
    size: () => [el.widthInput, el.heightInput],
    seed: () => [el.seedInput],
  };

  const state = {
    styles: [],
    file: null,
    previewUrl: null,
    upload: null, // {file, imageName} of the photo last uploaded
    uploading: null, // {file, promise} of the upload in flight
    framingAsked: 0, // the number of the last framing asked for; older answers are dropped
    framingTimer: null,
    job: null,
    jobPhoto: null, // the file name of the photo the job in flight was made from
    attempt: 0, // the number of the last generate; an answer to an older one is dropped
    shown: null, // {imageName, photoName} of the photo the avatar shown was made from
    stream: null,
    pollTimer: null,
    previewCount: 0,
    busy: false,
    keyWaiters: [],
  };

  // -- talking to the service -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, error, retryAfter) {
      super(error.message || "the service answered " + status);
      this.status = status;
      this.code = error.code || "http_" + status;
      this.details = error.details || {};
      this.retryAfter = retryAfter;
    }
  }

  function storedKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Accept", "application/json");
    const key = storedKey();
    if (key) headers.set("Authorization", "Bearer " + key);
    let answer;
    try {
      answer = await fetch(path, { ...options, headers });
    } catch (_) {
      throw new ApiError(0, {
        code: "network_error",
        message: "The service cannot be reached; check your connection and try again.",
      });
    }
    let data = null;
    try {
      data = await answer.json();
    } catch (_) {
      data = null;
    }
    if (answer.ok) return { status: answer.status, data };
    const error = (data && data.error) || { message: "the service answered " + answer.status };
    const failure = new ApiError(answer.status, error, answer.headers.get("Retry-After"));
    if (answer.status === 401) {
      // Ask until a key is accepted or the person gives up (Cancel, Escape).
      const gotKey = await askForKey(key ? "This API key was not accepted." : "");
      if (gotKey) return api(path, options);
    }
    throw failure;
  }

  function sentence(text) {
    const trimmed = String(text || "").trim();
    if (!trimmed) return "Something went wrong.";
    const first = trimmed[0].toUpperCase() + trimmed.slice(1);
    return /[.!?]$/.test(first) ? first : first + ".";
  }

  function explain(error) {
    const template = SENTENCES[error.code];
    if (!template) return sentence(error.message);
    const values = {
      ...error.details,
      retryAfter: error.retryAfter || "a few",
      maxSize: formatBytes(error.details.maxBytes || limits.maxBytes),
    };
    return template.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
  }

  // -- errors next to what caused them ------------------------------------------------------

  function showError(where, text) {
    const box = errorBoxes[where];
    box.textContent = text;
    box.hidden = false;
    for (const input of (invalidTargets[where] || (() => []))()) {
      input.setAttribute("aria-invalid", "true");
    }
  }

  function clearErrors(...where) {
    for (const name of where.length ? where : Object.keys(errorBoxes)) {
      errorBoxes[name].hidden = true;
      errorBoxes[name].textContent = "";
      for (const input of (invalidTargets[name] || (() => []))()) {
        input.removeAttribute("aria-invalid");
      }
    }
  }

  function showApiError(error, fallback) {
    if (error.code === "invalid_fields" && error.details.fields) {
      for (const [field, message] of Object.entries(error.details.fields)) {
        showError(FIELD_OF_INPUT[field] || fallback, sentence(field + ": " + message));
      }
      return;
    }
    showError(FIELD_OF_CODE[error.code] || fallback, explain(error));
  }

  // -- API key ------------------------------------------------------------------------------

  function askForKey(reason) {
    return new Promise((resolve) => {
      state.keyWaiters.push(resolve);
      if (el.keyDialog.open) return;
      // The reason (a refused key) is said once, in the error line under the field.
      el.keyReason.textContent = "This service needs an API key. It is kept in this browser only.";
      el.keyError.hidden = !reason;
      el.keyError.textContent = reason;
      el.keyInput.value = "";
      el.keyButton.hidden = false;
      el.keyDialog.showModal();
      el.keyInput.focus();
    });
  }

  function settleKeyWaiters(gotKey) {
    const waiters = state.keyWaiters;
    state.keyWaiters = [];
    for (const resolve of waiters) resolve(gotKey);
  }

  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = el.keyInput.value.trim();
    if (!key) {
      el.keyError.textContent = "Enter the API key you were given.";
      el.keyError.hidden = false;
      el.keyInput.focus();
      return;
    }
    try {
      localStorage.setItem(KEY_STORAGE, key);
    } catch (_) {
      /* private mode: the key lasts for this page only */
    }
    const waiting = state.keyWaiters.length > 0;
    el.keyDialog.close();
    settleKeyWaiters(true);
    // A key given through the "API key" link after a refusal: load what was refused.
    if (!waiting && !state.styles.length) loadStyles();
  });
  el.keyCancel.addEventListener("click", () => el.keyDialog.close());
  el.keyDialog.addEventListener("close", () => settleKeyWaiters(false));
  el.keyForget.addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    el.keyInput.value = "";
    el.keyError.textContent = "The key was removed from this browser.";
    el.keyError.hidden = false;
  });
  el.keyButton.addEventListener("click", () => askForKey(""));

  // -- the photo ------------------------------------------------------------------------------

  function formatBytes(bytes) {
    if (bytes >= 1024 * 1024) return (bytes / 1024 / 1024).toFixed(bytes % 1048576 ? 1 : 0) + " MB";
    if (bytes >= 1024) return Math.round(bytes / 1024) + " KB";
    return bytes + " bytes";
  }

  // Why the page refuses a file before sending it, or "" when it may be sent.
  function refusal(file) {
    if (!ACCEPTED_TYPES.includes(file.type)) {
      const kind = file.type ? "a " + file.type + " file" : "not a photo the page can recognise";
      return `“${file.name}” is ${kind}; choose a JPEG, PNG or WebP photo.`;
    }
    if (file.size > limits.maxBytes) {
      return (
        `“${file.name}” is ${formatBytes(file.size)}; photos can be at most ` +
        `${formatBytes(limits.maxBytes)}.`
      );
    }
    if (file.size === 0) return `“${file.name}” is empty; choose another photo.`;
    return "";
  }

  // A new file (taken or refused) replaces the photo and ends what was shown of the last job.
  // A job still being made from the old photo is let go: it goes on in the service, but the
  // page no longer follows it, so its avatar never appears beside the new photo.
  function forgetPhoto() {
    state.file = null;
    state.upload = null;
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = null;
    el.photoPreview.removeAttribute("src");
    el.photoFrame.hidden = true;
    el.dropHint.textContent = "Drop a photo here";
    el.photoName.textContent = "";
    clearFraming();
    if (state.busy) letGoOfJob();
    clearErrors("job");
    el.resultBox.hidden = true;
    state.shown = null;
    el.emptyNote.hidden = !el.progressBox.hidden;
  }

  function takePhoto(file) {
    clearErrors("photo", "form");
    if (!file) return;
    forgetPhoto();
    const refused = refusal(file);
    if (refused) {
      showError("photo", refused);
      return;
    }
    state.file = file;
    state.previewUrl = URL.createObjectURL(file);
    el.photoPreview.src = state.previewUrl;
    el.photoFrame.hidden = false;
    el.dropHint.textContent = "Drop another photo to replace it";
    el.photoName.textContent = `${file.name} (${formatBytes(file.size)})`;
    clearFraming();
    showFramingText("Looking for a face…");
    // Sent at once, so the face and the crop can be shown before generating.
    ensureUpload()
      .then(() => showFraming())
      .catch((error) => {
        if (state.file !== file) return;
        clearFraming();
        showApiError(error, "photo");
      });
  }

  // The upload of the chosen photo: one per photo, shared by the framing and by Generate.
  function ensureUpload() {
    const file = state.file;
    if (state.upload && state.upload.file === file) return Promise.resolve(state.upload);
    if (state.uploading && state.uploading.file === file) return state.uploading.promise;
    const form = new FormData();
    form.append("image", file, file.name);
    const promise = api("/upload-image", { method: "POST", body: form })
      .then(({ data }) => {
        const upload = { file, imageName: data.imageName };
        if (state.file === file) state.upload = upload;
        return upload;
      })
      .finally(() => {
        if (state.uploading && state.uploading.promise === promise) state.uploading = null;
      });
    state.uploading = { file, promise };
    return promise;
  }

  el.photoPreview.addEventListener("error", () => {
    if (state.file) {
      el.photoFrame.hidden = true;
      el.photoName.textContent = `${state.file.name}: this browser cannot preview it.`;
    }
  });
  for (const input of [el.photoInput, el.cameraInput]) {
    input.addEventListener("change", () => {
      takePhoto(input.files[0]);
      input.value = ""; // choosing the same file again is a change too
    });
  }
  for (const name of ["dragenter", "dragover"]) {
    el.drop.addEventListener(name, (event) => {
      event.preventDefault();
      el.drop.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    el.drop.addEventListener(name, () => el.drop.classList.remove("dragging"));
  }
  el.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) takePhoto(file);
  });
  // Dropping a file anywhere else must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  if (window.matchMedia && window.matchMedia("(hover: none) and (pointer: coarse)").matches) {
    body.classList.add("has-camera");
    el.cameraInput.tabIndex = 0;
  }

  // -- the face and the crop, as the service will use them -------------------------------------

  const SVG = "http://www.w3.org/2000/svg";

  function showFramingText(text) {
    el.framingText.textContent = text;
    el.framingText.hidden = !text;
  }

  function clearFraming() {
    el.framingOverlay.toggleAttribute("hidden", true);
    delete el.framingOverlay.dataset.crop;
    delete el.framingOverlay.dataset.face;
    showFramingText("");
  }

  function setBox(rect, box) {
    rect.toggleAttribute("hidden", !box); // SVG elements have the attribute, not the property
    if (!box) return;
    for (const name of ["x", "y", "width", "height"]) rect.setAttribute(name, String(box[name]));
  }

  // Ask the service which face and crop a generate of the chosen size would use, and draw them.
  async function showFraming() {
    const upload = state.upload;
    if (!upload || upload.file !== state.file || !state.styles.length) return; // styles: loading
    const size = quietSize();
    if (!size) {
      el.framingOverlay.toggleAttribute("hidden", true);
      showFramingText("Enter a valid size to see the crop.");
      return;
    }
    const number = ++state.framingAsked;
    const query = new URLSearchParams({
      width: String(size.width),
      height: String(size.height),
    });
    if (el.styleSelect.value) query.set("style", el.styleSelect.value);
    let data;
    try {
      ({ data } = await api(
        "/photos/" + encodeURIComponent(upload.imageName) + "/framing?" + query.toString()
      ));
    } catch (error) {
      if (number !== state.framingAsked) return;
      clearFraming();
      if (error.code === "image_not_found") {
        state.upload = null; // sent again by Generate
        return;
      }
      if (error.status === 422) showApiError(error, "photo");
      else showFramingText("The crop cannot be shown: " + explain(error));
      return;
    }
    if (number !== state.framingAsked || state.upload !== upload) return;
    drawFraming(data);
  }

  function drawFraming(data) {
    const { width, height, crop } = data;
    const face = (data.faces || [])[0] || null;
    el.framingOverlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
    // Everything outside the crop is shaded: the photo's outline, then the crop as a hole.
    el.cropShade.setAttribute(
      "d",
      `M0 0H${width}V${height}H0Z M${crop.x} ${crop.y}h${crop.width}v${crop.height}h${-crop.width}Z`
    );
    setBox(el.cropBox, crop);
    setBox(el.faceBox, face);
    el.framingOverlay.dataset.crop = JSON.stringify(crop);
    el.framingOverlay.dataset.face = face ? JSON.stringify(face) : "";
    el.framingOverlay.toggleAttribute("hidden", false);
    const count = (data.faces || []).length;
    let text;
    if (crop.source === "face") {
      text =
        count > 1
          ? `${count} faces found; the avatar will be cropped around the largest.`
          : "Face found; the avatar will be cropped around it.";
    } else if (data.policy === "off") {
      text = "Faces are not looked for here: the photo will be centre-cropped.";
    } else {
      text = "No face found: the photo will be centre-cropped.";
    }
    showFramingText(text);
  }

  function refreshFraming({ soon = false } = {}) {
    clearTimeout(state.framingTimer);
    if (!state.upload || state.upload.file !== state.file) return;
    if (soon) state.framingTimer = setTimeout(showFraming, 250);
    else showFraming();
  }

  // -- options --------------------------------------------------------------------------------

  function radio(name, value, text, checked) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = name;
    input.value = value;
    input.checked = checked;
    label.append(input, " " + text);
    return label;
  }

  function currentStyle() {
    return state.styles.find((style) => style.name === el.styleSelect.value) || null;
  }

  function renderStyleOptions(keepChoices) {
    const style = currentStyle();
    if (!style) return;
    el.styleDescription.textContent = style.description || "";
    const defaults = style.defaults || {};
    const chosen = keepChoices && selectedValue("gender");
    const gender = style.genders.includes(chosen) ? chosen : defaults.gender || style.genders[0];
    el.genderOptions.replaceChildren(
      ...style.genders.map((name) =>
        radio("gender", name, name[0].toUpperCase() + name.slice(1), name === gender)
      )
    );
    renderSizeOptions(defaults.width || 512, defaults.height || 512, keepChoices, true);
  }

  // The size presets around a default (the style's when ``isStyleDefault``), plus Custom.
  function renderSizeOptions(width, height, keepChoices, isStyleDefault) {
    const presetId = keepChoices && selectedValue("size");
    const presets = SIZE_PRESETS.slice();
    if (!presets.some((p) => p.width === width && p.height === height)) {
      presets.unshift({ id: `${width}x${height}`, width, height, label: `${width} × ${height}` });
    }
    const defaultId = presets.find((p) => p.width === width && p.height === height).id;
    const current = presetId && (presetId === "custom" || presets.some((p) => p.id === presetId));
    const selected = current ? presetId : defaultId;
    el.sizeOptions.replaceChildren(
      ...presets.map((p) =>
        radio(
          "size",
          p.id,
          p.id === defaultId && isStyleDefault ? p.label + " (style default)" : p.label,
          p.id === selected
        )
      ),
      radio("size", "custom", "Custom", selected === "custom")
    );
    state.presets = presets;
    if (!el.widthInput.value) el.widthInput.value = width;
    if (!el.heightInput.value) el.heightInput.value = height;
    el.customSize.hidden = selected !== "custom";
  }

  function selectedValue(name) {
    const input = el.form.querySelector(`input[name="${name}"]:checked`);
    return input ? input.value : "";
  }

  el.styleSelect.addEventListener("change", () => {
    clearErrors("style");
    renderStyleOptions(true);
    refreshFraming();
  });
  el.sizeOptions.addEventListener("change", () => {
    clearErrors("size");
    el.customSize.hidden = selectedValue("size") !== "custom";
    if (!el.customSize.hidden) el.widthInput.focus();
    refreshFraming();
  });
  for (const input of [el.widthInput, el.heightInput]) {
    input.addEventListener("input", () => refreshFraming({ soon: true }));
  }

  // Before the styles are known (they need the key when keys are on): say so in each control
  // instead of leaving it empty, and offer the sizes, which do not depend on a style.
  function showStylesPending(text) {
    if (state.styles.length) return;
    const option = document.createElement("option");
    option.value = "";
    option.disabled = true;
    option.selected = true;
    option.textContent = text;
    el.styleSelect.replaceChildren(option);
    el.styleDescription.textContent = "";
    const note = document.createElement("p");
    note.className = "hint";
    note.textContent = text;
    el.genderOptions.replaceChildren(note);
    if (!state.presets) renderSizeOptions(512, 512, false);
  }

  async function loadStyles() {
    clearErrors("style");
    let info = null;
    try {
      const answer = await fetch("/service-info", { headers: { Accept: "application/json" } });
      info = await answer.json();
    } catch (_) {
      info = null; // the styles' own answer tells
    }
    const needsKey = Boolean(info && info.authRequired && !storedKey());
    showStylesPending(needsKey ? "Enter your API key to load the styles." : "Loading the styles…");
    try {
      const { data } = await api("/styles");
      state.styles = data.styles || [];
      el.styleSelect.replaceChildren(
        ...state.styles.map((style) => {
          const option = document.createElement("option");
          option.value = style.name;
          option.textContent = style.name;
          return option;
        })
      );
      el.styleSelect.value = data.default || (state.styles[0] && state.styles[0].name);
      renderStyleOptions(false);
      refreshFraming();
    } catch (error) {
      if (error.status === 401) showStylesPending("Enter your API key to load the styles.");
      showError("style", "The styles could not be loaded: " + explain(error));
    }
  }

  // The chosen size, or null while it is not one the service takes (nothing is shown).
  function quietSize() {
    const preset = selectedValue("size");
    if (preset !== "custom") {
      const found = (state.presets || []).find((p) => p.id === preset);
      return found ? { width: found.width, height: found.height } : null;
    }
    const width = Number(el.widthInput.value);
    const height = Number(el.heightInput.value);
    const ok = (n) =>
      Number.isInteger(n) && n >= limits.minSide && n <= limits.maxSide && n % limits.step === 0;
    return ok(width) && ok(height) ? { width, height } : null;
  }

  function readSize() {
    const size = quietSize();
    if (!size && selectedValue("size") === "custom") {
      showError(
        "size",
        `Width and height must be whole numbers from ${limits.minSide} to ${limits.maxSide}, ` +
          `multiples of ${limits.step}.`
      );
      return null;
    }
    return size;
  }

  function readSeed() {
    const text = el.seedInput.value.trim();
    if (!text) return { ok: true, seed: null };
    if (!/^\d{1,20}$/.test(text) || !Number.isSafeInteger(Number(text))) {
      showError("seed", `The seed must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}.`);
      return { ok: false };
    }
    return { ok: true, seed: Number(text) };
  }

  // -- generating and following a job ---------------------------------------------------------

  // Generate from the chosen photo, or (``again``) from the photo of the avatar shown.
  async function generate({ newSeed = false, again = false } = {}) {
    if (state.busy) return;
    stopFollowing();
    state.job = null;
    clearErrors();
    const source = again ? state.shown : null;
    if (!source && !state.file) {
      showError("photo", "Choose a photo first.");
      el.photoInput.focus();
      return;
    }
    const size = readSize();
    if (newSeed) el.seedInput.value = "";
    const seed = readSeed();
    if (!size || !seed.ok) return;
    const attempt = ++state.attempt;
    setBusy(true);
    showProgress(source ? "Sending the job…" : "Uploading the photo…");
    bringProgressIntoView();
    try {
      const upload = source || (await ensureUpload());
      if (attempt !== state.attempt) return; // the photo was replaced meanwhile
      const request = {
        imageName: upload.imageName,
        gender: selectedValue("gender") || undefined,
        style: el.styleSelect.value || undefined,
        width: size.width,
        height: size.height,
        async: true,
      };
      if (seed.seed !== null) request.seed = seed.seed;
      state.jobPhoto = source ? source.photoName : upload.file.name;
      showProgress("Sending the job…");
      const { data } = await api("/generate-avatar-by-image", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
      });
      if (attempt !== state.attempt) return; // let go: the photo was replaced meanwhile
      follow(data);
    } catch (error) {
      if (attempt !== state.attempt) return;
      hideProgress();
      setBusy(false);
      if (source && error.code === "image_not_found") {
        showError(
          "form",
          "The service no longer has the photo of this avatar; choose it again to make another."
        );
        return;
      }
      if (error.code === "image_not_found") state.upload = null;
      showApiError(error, "form");
    }
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  el.again.addEventListener("click", () => generate({ newSeed: true, again: true }));

  function setBusy(busy) {
    state.busy = busy;
    el.generate.disabled = busy;
    el.again.disabled = busy;
    el.generate.textContent = busy ? "Working…" : "Generate avatar";
  }

  function showProgress(text) {
    el.emptyNote.hidden = true;
    el.resultBox.hidden = true;
    el.progressBox.hidden = false;
    el.cancel.hidden = !state.job;
    el.cancel.disabled = false;
    el.statusText.textContent = text;
    el.stepBar.removeAttribute("value");
    el.stepText.textContent = "";
    el.livePreview.hidden = true;
  }

  // Room the progress box takes once steps and a live preview are shown (Cancel at its foot).
  const PROGRESS_ROOM_PX = 480;

  // On a phone the result panel is below the form: scroll the progress box to the top of the
  // screen, so that it can grow without pushing Cancel out of view (not when it already fits).
  function bringProgressIntoView() {
    const top = el.progressBox.getBoundingClientRect().top;
    const room = Math.min(window.innerHeight, PROGRESS_ROOM_PX);
    if (top >= 0 && top + room <= window.innerHeight) return;
    const still = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    el.progressBox.scrollIntoView({ block: "start", behavior: still ? "auto" : "smooth" });
  }

  function hideProgress() {
    el.progressBox.hidden = true;
    if (el.resultBox.hidden) el.emptyNote.hidden = false;
  }

  function follow(record) {
    setBusy(true);
    try {
      sessionStorage.setItem(JOB_STORAGE, record.jobId);
    } catch (_) {
      /* storage disabled: a reload forgets the job, nothing else */
    }
    state.job = record;
    state.previewCount = 0;
    el.progressBox.dataset.jobId = record.jobId;
    showProgress("Queued…");
    el.cancel.hidden = false;
    bringProgressIntoView();
    onRecord(record);
    if (isEnded(record)) return;
    const url = record.links && record.links.events;
    if (!url || typeof EventSource === "undefined") {
      poll();
      return;
    }
    const stream = new EventSource(url);
    state.stream = stream;
    const handle = (name, fn) =>
      stream.addEventListener(name, (event) => {
        if (state.stream !== stream) return;
        fn(JSON.parse(event.data));
      });
    handle("state", onRecord);
    handle("queued", onRecord);
    handle("running", onRecord);
    handle("position", onPosition);
    handle("progress", onProgress);
    handle("preview", onPreview);
    for (const name of ["succeeded", "failed", "cancelled"]) handle(name, onRecord);
    stream.addEventListener("error", () => {
      // A closed stream (refused, busy, key) is not retried by the browser: poll instead.
      if (state.stream === stream && stream.readyState === EventSource.CLOSED) {
        state.stream = null;
        poll();
      }
    });
  }

  function stopFollowing() {
    if (state.stream) state.stream.close();
    state.stream = null;
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function poll() {
    const job = state.job;
    if (!job || isEnded(job)) return;
    try {
      const { data } = await api("/jobs/" + encodeURIComponent(job.jobId));
      if (state.job && state.job.jobId === data.jobId) onRecord(data);
    } catch (error) {
      if (error.status && error.status < 500 && error.status !== 429) {
        finish();
        showApiError(error, "job");
        return;
      }
    }
    if (state.job && !isEnded(state.job)) state.pollTimer = setTimeout(poll, POLL_MS);
  }

  function isEnded(record) {
    return ["succeeded", "failed", "cancelled"].includes(record.status);
  }

  function onRecord(record) {
    if (!state.job || record.jobId !== state.job.jobId) return;
    state.job = { ...state.job, ...record };
    switch (record.status) {
      case "queued":
        onPosition(record);
        break;
      case "running":
        el.statusText.textContent = "Running…";
        if (record.progress) onProgress(record.progress);
        break;
      case "succeeded":
        finish();
        showResult(record);
        break;
      case "failed":
        finish();
        showApiError(record.error || { code: "failed", message: "the job failed", details: {} }, "job");
        break;
      case "cancelled":
        finish();
        showError("job", "The job was cancelled.");
        break;
    }
  }

  function onPosition(data) {
    if (state.job && state.job.status === "running") return;
    const position = data.queuePosition;
    let text = position ? `Waiting in the queue: position ${position}` : "Queued";
    const start = estimatedStart(data);
    if (start !== null) text += start <= 1 ? ", starting any moment" : `, starts in about ${start} s`;
    el.statusText.textContent = text + ".";
  }

  function estimatedStart(data) {
    if (typeof data.estimatedStartSeconds === "number") {
      return Math.max(0, Math.round(data.estimatedStartSeconds));
    }
    if (data.estimatedStartAt) {
      const at = Date.parse(data.estimatedStartAt);
      if (!Number.isNaN(at)) return Math.max(0, Math.round((at - Date.now()) / 1000));
    }
    return null;
  }

  function onProgress(progress) {
    if (!state.job) return;
    state.job.status = "running";
    const node = progress.nodeType || "";
    if (typeof progress.value === "number" && progress.max) {
      el.stepBar.max = progress.max;
      el.stepBar.value = progress.value;
      el.stepText.textContent = `Step ${progress.value} of ${progress.max}`;
      el.statusText.textContent = node ? `Running: ${node}` : "Running…";
    } else {
      el.statusText.textContent = node ? `Running: ${node}` : "Running…";
    }
  }

  function onPreview(data) {
    if (!data.url) return;
    const url = new URL(data.url, location.href);
    state.previewCount += 1;
    url.searchParams.set("frame", String(state.previewCount));
    el.livePreview.src = url.toString();
    el.livePreview.hidden = false;
  }

  function finish() {
    stopFollowing();
    hideProgress();
    setBusy(false);
    try {
      sessionStorage.removeItem(JOB_STORAGE);
    } catch (_) {
      /* nothing stored */
    }
  }

  // Stop following the job in flight (and drop the answer of a generate still being sent).
  function letGoOfJob() {
    state.attempt += 1;
    state.job = null;
    delete el.progressBox.dataset.jobId;
    finish();
  }

  async function resumeJob() {
    let jobId = null;
    try {
      jobId = sessionStorage.getItem(JOB_STORAGE);
    } catch (_) {
      return;
    }
    if (!jobId) return;
    state.jobPhoto = null; // the photo of a job taken up after a reload is not known here
    try {
      const { data } = await api("/jobs/" + encodeURIComponent(jobId));
      if (isEnded(data)) {
        sessionStorage.removeItem(JOB_STORAGE);
        if (data.status === "succeeded") showResult(data);
        return;
      }
      follow(data);
    } catch (_) {
      sessionStorage.removeItem(JOB_STORAGE); // unknown or expired: start afresh
    }
  }

  el.cancel.addEventListener("click", async () => {
    const job = state.job;
    if (!job) return;
    el.cancel.disabled = true;
    el.statusText.textContent = "Cancelling…";
    try {
      const { data } = await api("/jobs/" + encodeURIComponent(job.jobId) + "/cancel", {
        method: "POST",
      });
      onRecord(data);
      if (!state.stream && !isEnded(data)) poll();
    } catch (error) {
      if (error.code === "job_already_ended") return; // the stream tells how it ended
      el.cancel.disabled = false;
      showApiError(error, "job");
    }
  });

  // -- the result and the recent strip ----------------------------------------------------------

  function showResult(record) {
    const avatar = (record.avatars || [])[0];
    if (!avatar) {
      showError("job", "The job ended without an image.");
      return;
    }
    const entry = {
      url: avatar.url,
      fileName: avatar.fileName,
      downloadName: downloadName(state.jobPhoto, record, avatar),
      imageName: record.imageName, // "try again" makes another avatar of this photo
      photoName: state.jobPhoto,
      jobId: record.jobId,
      style: record.style,
      gender: record.gender,
      seed: record.seed,
      width: avatar.width,
      height: avatar.height,
      at: record.finishedAt || new Date().toISOString(),
    };
    display(entry);
    remember(entry);
    el.download.focus();
  }

  // The name a download is saved under, as the command line names its files:
  // <photo>-<style>-<seed>.<ext> ("avatar" when the photo is not known).
  function downloadName(photoName, record, avatar) {
    const stem = String(photoName || "avatar")
      .replace(/\.[^.]*$/, "")
      .replace(/[^\p{L}\p{N}._-]+/gu, "-")
      .replace(/^[-.]+|-+$/g, "");
    const extension = (/\.[A-Za-z0-9]+$/.exec(avatar.fileName || "") || [".png"])[0];
    return `${stem || "avatar"}-${record.style}-${record.seed}${extension}`;
  }

  function display(entry) {
    el.emptyNote.hidden = true;
    el.resultBox.hidden = false;
    el.resultImage.src = entry.url;
    el.resultImage.alt = `Generated avatar, style ${entry.style}, seed ${entry.seed}`;
    el.resultImage.width = entry.width;
    el.resultImage.height = entry.height;
    el.download.href = entry.url;
    el.download.setAttribute("download", entry.downloadName || downloadName(null, entry, entry));
    el.resultCaption.textContent =
      `${entry.style} · ${entry.gender || ""} · ${entry.width} × ${entry.height} · seed ${entry.seed}`;
    // Avatars remembered before their photo's name was kept cannot be made again from it.
    state.shown = entry.imageName
      ? { imageName: entry.imageName, photoName: entry.photoName || null }
      : null;
    el.again.hidden = !state.shown;
    for (const button of el.recentList.querySelectorAll("button")) {
      button.setAttribute("aria-current", String(button.dataset.url === entry.url));
    }
  }

  // Browsers keep the download attribute's name only for blob: and data: links (Chromium drops it
  // even for this origin's files): fetch the avatar and save it from a blob under that name.
  el.download.addEventListener("click", async (event) => {
    event.preventDefault();
    clearErrors("job");
    const name = el.download.getAttribute("download");
    try {
      const answer = await fetch(el.download.href);
      if (!answer.ok) throw new Error("the service answered " + answer.status);
      const url = URL.createObjectURL(await answer.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      showError("job", "The avatar could not be downloaded: " + sentence(error.message));
    }
  });

  function recent() {
    try {
      const list = JSON.parse(localStorage.getItem(RECENT_STORAGE) || "[]");
      return Array.isArray(list) ? list : [];
    } catch (_) {
      return [];
    }
  }

  function remember(entry) {
    const list = [entry, ...recent().filter((item) => item.url !== entry.url)].slice(0, RECENT_MAX);
    try {
      localStorage.setItem(RECENT_STORAGE, JSON.stringify(list));
    } catch (_) {
      /* storage full or disabled: the strip is only for this page view */
    }
    renderRecent(list, entry.url);
  }

  function renderRecent(list = recent(), current = "") {
    el.recentBox.hidden = list.length === 0;
    el.recentList.replaceChildren(
      ...list.map((entry) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.url = entry.url;
        button.setAttribute("aria-current", String(entry.url === current));
        button.setAttribute("aria-label", `Show the ${entry.style} avatar with seed ${entry.seed}`);
        const image = document.createElement("img");
        image.src = entry.url;
        image.alt = "";
        image.loading = "lazy";
        image.addEventListener("error", () => refreshRecent(entry, image, item), { once: true });
        button.append(image);
        button.addEventListener("click", () => display(entry));
        item.append(button);
        return item;
      })
    );
  }

  // Signed links (with API keys) expire: ask the job for fresh ones before giving up an entry.
  async function refreshRecent(entry, image, item) {
    try {
      const { data } = await api("/jobs/" + encodeURIComponent(entry.jobId));
      const avatar = (data.avatars || []).find((a) => a.fileName === entry.fileName);
      if (!avatar || avatar.url === entry.url) throw new Error("no fresher link");
      const list = recent().map((old) => (old.url === entry.url ? { ...old, url: avatar.url } : old));
      entry.url = avatar.url;
      image.closest("button").dataset.url = avatar.url;
      image.addEventListener("error", () => item.remove(), { once: true });
      image.src = avatar.url;
      localStorage.setItem(RECENT_STORAGE, JSON.stringify(list));
    } catch (_) {
      item.remove(); // the job or its avatar is gone
    }
  }

  el.clearRecent.addEventListener("click", () => {
    localStorage.removeItem(RECENT_STORAGE);
    renderRecent([]);
  });

  // -- service status -------------------------------------------------------------------------

  async function loadStatus() {
    let report = null;
    try {
      const answer = await fetch("/readyz", { headers: { Accept: "application/json" } });
      report = await answer.json();
    } catch (_) {
      report = null;
    }
    if (!report || typeof report.ready !== "boolean") return;
    el.standinBanner.hidden = !report.standin;
    if (!report.ready) {
      el.readyBanner.textContent =
        "The service is not ready: " + sentence(report.reason || "no image server is available");
      el.readyBanner.hidden = false;
    } else {
      el.readyBanner.hidden = true;
    }
  }

  // -- start ------------------------------------------------------------------------------------

  el.maxSize.textContent = formatBytes(limits.maxBytes);
  if (storedKey()) el.keyButton.hidden = false;
  renderRecent();
  loadStatus();
  loadStyles();
  resumeJob();
})();
