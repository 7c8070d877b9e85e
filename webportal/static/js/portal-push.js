// Test push: send it without leaving the page (form[id=test-push-form] with data-status naming
// the status box), then poll the push's status until the phone answered or it timed out.
// A status box rendered with data-poll-url (the /portal/test/push/<id> page) is polled as well.
"use strict";
(function () {
  function follow(box, url) {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("status " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        show(box, data);
        if (!data.final) {
          window.setTimeout(function () { follow(box, url); }, 1500);
        }
      })
      .catch(function () {
        window.setTimeout(function () { follow(box, url); }, 4000);
      });
  }

  function show(box, data) {
    box.hidden = false;
    box.className = "status status-" + data.tone;
    box.dataset.state = data.state;
    box.textContent = data.message;
    var shown = document.getElementById("push-number");
    if (data.number !== null && data.number !== undefined && data.state === "pending" && !shown) {
      var line = document.createElement("p");
      line.className = "number-match";
      line.appendChild(document.createTextNode("In the app, pick "));
      var number = document.createElement("strong");
      number.className = "big-number";
      number.id = "push-number";
      number.textContent = String(data.number);
      line.appendChild(number);
      box.appendChild(line);
    }
  }

  var form = document.getElementById("test-push-form");
  if (form) {
    var target = document.getElementById(form.dataset.status);
    form.addEventListener("submit", function (event) {
      if (!target || !window.fetch) {
        return;  // the plain form post works too
      }
      event.preventDefault();
      var button = form.querySelector("button");
      button.disabled = true;
      fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": window.openmfa.csrfToken() },
      })
        .then(function (response) {
          return response.json();
        })
        .then(function (data) {
          show(target, data);
          button.disabled = false;
          button.textContent = "Send another test push";
          if (!data.final && data.status_url) {
            window.setTimeout(function () { follow(target, data.status_url); }, 1000);
          }
        })
        .catch(function () {
          button.disabled = false;
          form.submit();  // fall back to the page that shows the push
        });
    });
  }

  var rendered = document.querySelector("#push-status[data-poll-url]");
  if (rendered) {
    window.setTimeout(function () { follow(rendered, rendered.dataset.pollUrl); }, 1000);
  }
})();
