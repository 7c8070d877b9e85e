// Activation page: count the code's lifetime down and poll its status until the phone has
// activated (then reveal "Send test push") or the code expired. The server sends the wording.
"use strict";
(function () {
  var box = document.getElementById("activation-status");
  if (!box) {
    return;
  }
  var countdown = document.getElementById(box.dataset.countdown);
  var after = document.getElementById("after-activation");
  var left = countdown ? parseInt(countdown.dataset.expiresIn, 10) : NaN;
  var done = false;
  var activated = false;
  var ticker = null;

  function show(data) {
    box.textContent = data.message;
    box.className = "status status-" + data.tone;
    box.dataset.state = data.state;
  }

  function renderCountdown() {
    if (!countdown || isNaN(left) || activated) {
      return;
    }
    if (left <= 0) {
      countdown.textContent = "This code expired. Press “New code” for another one.";
      return;
    }
    var minutes = Math.floor(left / 60);
    var seconds = left % 60;
    countdown.textContent =
      "Expires in " + minutes + ":" + (seconds < 10 ? "0" : "") + seconds + ".";
  }

  function tick() {
    if (done || activated) {
      window.clearInterval(ticker);
      return;
    }
    left -= 1;
    renderCountdown();
    if (left <= 0) {
      poll();  // one last look: the server says whether it was used in time
    }
  }

  function onActivated(canTest) {
    activated = true;
    if (countdown) {
      countdown.hidden = true;
    }
    if (canTest && after) {
      after.hidden = false;  // "Send test push" (a confirmed device needs no test here)
    }
  }

  function poll() {
    if (done) {
      return;
    }
    fetch(box.dataset.pollUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("status " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        show(data);
        if (typeof data.expires_in === "number" && !activated) {
          left = data.expires_in;
          renderCountdown();
        }
        if (data.state === "activated" || data.state === "active") {
          onActivated(data.state === "activated");
        }
        if (data.final) {
          done = true;
        } else if (!(data.state === "waiting" && left <= 0)) {
          window.setTimeout(poll, 1500);
        }
      })
      .catch(function () {
        window.setTimeout(poll, 4000);
      });
  }

  renderCountdown();
  ticker = window.setInterval(tick, 1000);
  window.setTimeout(poll, 1000);
})();
