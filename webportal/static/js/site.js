// Small behaviours every page may use; loaded on every page (no inline script: see the CSP).
// <form data-confirm="Remove this device?"> asks before submitting.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm) {
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  }
});

// The CSRF token of this page, for fetch(): headers: {"X-CSRF-Token": openmfa.csrfToken()}.
window.openmfa = {
  csrfToken: function () {
    var field = document.querySelector('input[name="csrf_token"]');
    return field ? field.value : "";
  },
};
