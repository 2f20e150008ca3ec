// The login form: POST the token to /v1/session; on success the cookie is set, go to the page.
const form = document.querySelector("form");
const error = document.querySelector("[data-testid=login-error]");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const token = form.elements.token.value.trim();
  try {
    const answer = await fetch("/v1/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Squall-Request": "1" },
      body: JSON.stringify({ token }),
    });
    if (answer.ok) {
      location.href = "/";
      return;
    }
    const body = await answer.json().catch(() => ({}));
    error.textContent = body?.error?.message ?? `refused (${answer.status})`;
  } catch (failure) {
    error.textContent = `the gateway does not answer: ${failure.message}`;
  }
  error.hidden = false;
});
