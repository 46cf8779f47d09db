// The demo page: calls the same public routes a client would, and shows each request's latency
// and where the server spent it (Server-Timing).
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

// The server's Server-Timing header ("queue;dur=0.4, model;dur=1.9, ...") as "queue 0.4 · model 1.9 ms".
function serverTiming(response) {
  const stages = [...(response.headers.get("Server-Timing") || "").matchAll(/([\w-]+);dur=([\d.]+)/g)];
  return stages.map(([, name, ms]) => `${name} ${Number(ms).toFixed(1)}`).join(" · ");
}

$("text-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const started = performance.now();
  const response = await fetch("/lstm", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ line: $("text-input").value }),
  });
  const latency = performance.now() - started;
  if (!response.ok) {
    showError(await errorText(response));
    return;
  }
  const answer = await response.json();
  const positive = answer.probabilities[1];
  $("text-label").textContent = answer.label;
  $("text-score").textContent = `${(100 * answer.probabilities[answer.class_id]).toFixed(1)}%`;
  $("text-bar").style.width = `${(100 * positive).toFixed(1)}%`;
  $("text-version").textContent = answer.model_version;
  $("text-latency").textContent = latency.toFixed(0);
  $("text-timing").textContent = serverTiming(response);
  $("text-result").hidden = false;
});

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = url;
  });
}

function drawOverlay(original, mask) {
  // The original, dimmed where the mask says "not salient".
  const canvas = $("image-overlay");
  canvas.width = original.naturalWidth;
  canvas.height = original.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(mask, 0, 0, canvas.width, canvas.height);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  context.drawImage(original, 0, 0);
  const picture = context.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < picture.data.length; i += 4) {
    const keep = 0.25 + 0.75 * (pixels.data[i] / 255);
    picture.data[i] *= keep;
    picture.data[i + 1] *= keep;
    picture.data[i + 2] *= keep;
  }
  context.putImageData(picture, 0, 0);
}

$("image-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const file = $("image-input").files[0];
  if (!file) {
    showError("choose an image first");
    return;
  }
  const started = performance.now();
  const response = await fetch("/cv_sod", {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream", Accept: "image/png" },
    body: file,
  });
  const latency = performance.now() - started;
  if (!response.ok) {
    showError(await errorText(response));
    return;
  }
  const maskUrl = URL.createObjectURL(await response.blob());
  const originalUrl = URL.createObjectURL(file);
  try {
    const [original, mask] = await Promise.all([loadImage(originalUrl), loadImage(maskUrl)]);
    $("image-original").src = originalUrl;
    $("image-mask").src = maskUrl;
    drawOverlay(original, mask);
  } catch (error) {
    showError(error.message);
    return;
  }
  $("image-version").textContent = response.headers.get("X-Model-Version") || "?";
  $("image-latency").textContent = latency.toFixed(0);
  $("image-timing").textContent = serverTiming(response);
  $("image-result").hidden = false;
});
