// Dataset upload with a progress bar: XHR to the JSON API, with the session's CSRF token.
(function () {
  "use strict";
  const form = document.getElementById("upload");
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/datasets");
    xhr.setRequestHeader("X-CSRF-Token", form.dataset.csrf);
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "uploading…";
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) bar.value = Math.round(100 * e.loaded / e.total);
    });
    xhr.addEventListener("load", function () {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      if (xhr.status === 200 || xhr.status === 201) {
        status.textContent = "stored as " + body.id + "; reloading…";
        window.location.reload();
        return;
      }
      const detail = body && body.detail;
      status.textContent = "refused (" + xhr.status + "): " + (Array.isArray(detail)
        ? detail.map(function (p) { return p.path + ": " + p.message; }).join("; ")
        : String(detail || xhr.statusText));
    });
    xhr.addEventListener("error", function () { status.textContent = "the upload failed (network)"; });
    const fd = new FormData(form);
    for (const [k, v] of Array.from(fd.entries())) { if (v === "") fd.delete(k); }
    xhr.send(fd);
  });
})();
