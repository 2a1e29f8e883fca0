// Waits for the click on the email link with a long poll, then submits the "I pressed the link"
// form (with its CSRF token), so the page continues by itself. Without JavaScript the button
// does the same.
(function () {
  "use strict";
  var form = document.getElementById("continue");
  var waiting = document.getElementById("waiting");
  if (!form || !window.fetch) {
    return;
  }
  if (waiting) {
    waiting.textContent = "Waiting for you to press the link…";
  }
  function pause(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }
  async function poll() {
    for (;;) {
      var answer;
      try {
        var response = await fetch(form.dataset.status, { credentials: "same-origin", cache: "no-store" });
        // No sign-in waits in this browser any more (another page finished or ended it):
        // the form's answer says so, rather than this page waiting for ever.
        if (response.status === 404) {
          form.submit();
          return;
        }
        if (!response.ok) {
          await pause(2000);
          continue;
        }
        answer = await response.json();
      } catch (error) {
        await pause(2000);
        continue;
      }
      if (answer.status !== "pending") {
        form.submit();
        return;
      }
    }
  }
  poll();
})();
