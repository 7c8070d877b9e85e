// Admin sign-in, second step: poll the push's state and continue once it is approved.
"use strict";
(function () {
  var box = document.getElementById("push-status");
  if (!box) {
    return;
  }
  var url = box.dataset.pollUrl;
  var form = document.getElementById(box.dataset.doneForm);
  var messages = {
    denied: "The sign-in was denied on the phone.",
    fraud: "The sign-in was reported as fraud.",
    expired: "The push expired without an answer.",
    cancelled: "The push was cancelled.",
    none: "The push is no longer waiting.",
  };
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.ok ? response.json() : { state: "pending" };
      })
      .then(function (data) {
        if (data.state === "approved") {
          box.textContent = "Approved. Signing you in…";
          box.className = "status status-ok";
          form.submit();
        } else if (data.state === "pending") {
          window.setTimeout(poll, 2000);
        } else {
          box.textContent = (messages[data.state] || "The push failed.") + " Send a new one or type a code.";
          box.className = "status status-failed";
          form.submit();  // the server clears the push and says why
        }
      })
      .catch(function () {
        window.setTimeout(poll, 4000);
      });
  }
  window.setTimeout(poll, 1000);
})();
