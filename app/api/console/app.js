// ClawBot console: API-key sign-in, streaming chat over /v1/chat/completions, and the admin view.
//
// Security notes (the server's CSP forbids inline code, so everything lives here):
// - The JWT is held in the `session` variable only: nothing is written to web storage or cookies,
//   so it dies with the tab and no other page or script can read it back.
// - Every server-provided string is rendered with textContent, never parsed as HTML.
// - The scopes decoded from the JWT only decide what to *show*; the server enforces them.
"use strict";

(() => {
  const STATS_REFRESH_MS = 3000;
  const CONV_PAGE_SIZE = 10;

  /** @type {{token: string, expiresAt: number, scopes: string[], keyId: string} | null} */
  let session = null;
  /** Conversation sent with each request: [{role, content}]. */
  let history = [];
  /** AbortController of the answer being streamed, if any. */
  let streaming = null;
  let statsTimer = null;
  let retryTimer = null;
  let convPage = 1;
  let convKey = "";

  const $ = (id) => {
    const el = document.getElementById(id);
    if (!el) throw new Error(`console markup lacks #${id}`);
    return el;
  };

  // ---------------------------------------------------------------- helpers

  function showMessage(el, text, kind = "error") {
    el.textContent = text;
    el.className = `message ${kind}`;
    el.hidden = !text;
  }

  function clearMessage(el) {
    showMessage(el, "");
  }

  function decodeJwtPayload(token) {
    // For display only: the signature is the server's business.
    const part = token.split(".")[1];
    if (!part) return {};
    try {
      const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return {};
    }
  }

  /** Reads the one error shape {"error": {"type","message","code"}}; falls back to the status text. */
  async function errorOf(resp) {
    let error = {};
    try {
      const body = await resp.json();
      if (body && typeof body.error === "object" && body.error) error = body.error;
    } catch {
      // not JSON: keep the fallback below
    }
    const retryAfter = Number.parseInt(resp.headers.get("Retry-After") || "", 10);
    return {
      status: resp.status,
      code: String(error.code || ""),
      message: String(error.message || resp.statusText || `HTTP ${resp.status}`),
      retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
    };
  }

  /** A sentence a person can act on, per status the chat and admin calls can answer with. */
  function describeError(err) {
    switch (err.status) {
      case 401:
        return `Your session has expired or is no longer valid (${err.message}). Sign in again.`;
      case 403:
        return `This key is not allowed to do that: ${err.message}`;
      case 429:
        return `Rate limited: retry in ${err.retryAfter ?? "a few"} s. (${err.message})`;
      case 503:
        return `The service is warming up: retry in ${err.retryAfter ?? "a few"} s. (${err.message})`;
      default:
        return `Request failed (${err.status}${err.code ? ` ${err.code}` : ""}): ${err.message}`;
    }
  }

  function sessionExpired() {
    return !session || (session.expiresAt && Date.now() >= session.expiresAt);
  }

  function authHeaders(extra = {}) {
    return { Authorization: `Bearer ${session ? session.token : ""}`, ...extra };
  }

  function fmtNumber(value, digits = 0) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }

  function fmtSeconds(value) {
    if (value === null || value === undefined) return "–";
    return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
  }

  function fmtDuration(totalSeconds) {
    const s = Math.max(0, Math.floor(totalSeconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h ${m}m`;
    if (h) return `${h}h ${m}m`;
    return `${m}m ${s % 60}s`;
  }

  function fmtDate(value) {
    if (!value) return "never";
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  // ---------------------------------------------------------------- views

  function showView(name) {
    $("signin-view").hidden = name !== "signin";
    $("chat-view").hidden = name !== "chat";
    $("admin-view").hidden = name !== "admin";
    $("nav").hidden = name === "signin";
    $("nav-chat").setAttribute("aria-current", name === "chat" ? "page" : "false");
    $("nav-admin").setAttribute("aria-current", name === "admin" ? "page" : "false");
    if (name === "admin") startAdmin();
    else stopStatsTimer();
    if (name === "chat") $("prompt").focus();
    if (name === "signin") $("api-key").focus();
  }

  function signOut(message, kind = "warn") {
    if (streaming) streaming.abort();
    clearInterval(retryTimer);
    $("send").disabled = false;
    session = null;
    history = [];
    renderEmptyHistory();
    stopStatsTimer();
    $("whoami").textContent = "";
    $("nav-admin").hidden = true;
    $("api-key").value = "";
    showMessage($("signin-message"), message || "", kind);
    showView("signin");
  }

  // ---------------------------------------------------------------- sign-in

  async function signIn(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    const message = $("signin-message");
    if (!key) {
      showMessage(message, "Enter an API key.");
      return;
    }
    $("signin-submit").disabled = true;
    showMessage(message, "Signing in…", "info");
    try {
      const resp = await fetch("/api/auth", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ api_key: key }),
        credentials: "omit",
      });
      if (!resp.ok) {
        const err = await errorOf(resp);
        const text = err.status === 401 || err.status === 403
          ? `That API key was refused: ${err.message}`
          : describeError(err);
        showMessage(message, text);
        return;
      }
      const body = await resp.json();
      const claims = decodeJwtPayload(body.token);
      const expiresIn = Number(body.expires_in) || 0;
      session = {
        token: String(body.token),
        expiresAt: claims.exp ? claims.exp * 1000 : expiresIn ? Date.now() + expiresIn * 1000 : 0,
        scopes: Array.isArray(claims.scopes) ? claims.scopes.map(String) : [],
        keyId: String(claims.sub ?? ""),
      };
      $("api-key").value = "";
      clearMessage(message);
      $("whoami").textContent = `${session.keyId || "signed in"} · ${session.scopes.join(", ") || "no scopes"}`;
      $("nav-admin").hidden = !session.scopes.includes("admin");
      showView("chat");
    } catch (e) {
      showMessage(message, `Could not reach the service: ${e.message}`);
    } finally {
      $("signin-submit").disabled = false;
    }
  }

  // ---------------------------------------------------------------- chat

  function renderEmptyHistory() {
    const box = $("history");
    box.replaceChildren($("history-empty"));
    $("history-empty").hidden = false;
  }

  function addTurn(role, text) {
    $("history-empty").hidden = true;
    const turn = document.createElement("div");
    turn.className = `turn ${role}`;
    const label = document.createElement("div");
    label.className = "turn-role";
    label.textContent = role === "user" ? "You" : "ClawBot";
    const body = document.createElement("div");
    body.className = "turn-text";
    body.textContent = text;
    const meta = document.createElement("div");
    meta.className = "turn-meta";
    turn.append(label, body, meta);
    $("history").append(turn);
    turn.scrollIntoView({ block: "end" });
    return { turn, body, meta };
  }

  function setStreaming(active) {
    $("send").disabled = active;
    $("stop").disabled = !active;
    $("clear-chat").disabled = active;
  }

  function holdSend(seconds, template) {
    // After a 429/503 the send button waits out Retry-After, counting down so the wait is visible.
    clearInterval(retryTimer);
    let left = seconds;
    const tick = () => {
      if (left <= 0) {
        clearInterval(retryTimer);
        $("send").disabled = false;
        clearMessage($("chat-message"));
        return;
      }
      $("send").disabled = true;
      showMessage($("chat-message"), template(left), "warn");
      left -= 1;
    };
    tick();
    retryTimer = setInterval(tick, 1000);
  }

  /** Yields each SSE event's data string from a fetch Response body. */
  async function* sseData(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  }

  async function send(event) {
    event.preventDefault();
    const chatMessage = $("chat-message");
    const text = $("prompt").value.trim();
    if (!text || streaming) return;
    if (sessionExpired()) {
      signOut("Your session has expired. Sign in again to continue.");
      return;
    }
    clearMessage(chatMessage);
    const maxTokens = Number.parseInt($("max-tokens").value, 10);
    const temperature = Number.parseFloat($("temperature").value);
    const userTurn = addTurn("user", text);
    history.push({ role: "user", content: text });
    $("prompt").value = "";

    const answer = addTurn("assistant", "");
    answer.turn.classList.add("streaming");
    answer.meta.textContent = "waiting for the first token…";
    const controller = new AbortController();
    streaming = controller;
    setStreaming(true);
    const started = performance.now();
    let firstToken = null;
    let usage = null;
    let outcome = "done";
    let failure = null;

    try {
      const payload = {
        messages: history,
        stream: true,
        stream_options: { include_usage: true },
      };
      if (Number.isFinite(maxTokens)) payload.max_tokens = maxTokens;
      if (Number.isFinite(temperature)) payload.temperature = temperature;
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(payload),
        signal: controller.signal,
        credentials: "omit",
      });
      if (!resp.ok) {
        failure = await errorOf(resp);
      } else {
        for await (const data of sseData(resp)) {
          if (data === "[DONE]") break;
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch {
            continue; // a malformed event must not lose the rest of the answer
          }
          if (chunk.error) {
            failure = { status: 500, code: String(chunk.error.code || ""), message: String(chunk.error.message || "generation failed"), retryAfter: null };
            break;
          }
          if (chunk.usage) usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            const delta = choice.delta && choice.delta.content;
            if (delta) {
              if (firstToken === null) firstToken = performance.now();
              answer.body.textContent += delta;
              answer.turn.scrollIntoView({ block: "end" });
            }
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") outcome = "stopped";
      else failure = { status: 0, code: "network", message: `the connection failed: ${e.message}`, retryAfter: null };
    } finally {
      streaming = null;
      setStreaming(false);
      answer.turn.classList.remove("streaming");
    }
    if (!session) return; // signed out mid-answer: the history this answer belonged to is gone

    const elapsed = (performance.now() - started) / 1000;
    if (failure) {
      // The question was not answered: take it back out of the history and return it to the input box.
      history.pop();
      userTurn.turn.classList.add("failed");
      answer.turn.remove();
      $("prompt").value = text;
      if (failure.status === 401) {
        signOut(describeError(failure));
        return;
      }
      if ((failure.status === 429 || failure.status === 503) && failure.retryAfter) {
        const lead = failure.status === 429 ? "Rate limited" : "The service is warming up";
        holdSend(failure.retryAfter, (n) => `${lead}: retry in ${n} s.`);
      } else {
        showMessage(chatMessage, describeError(failure));
      }
      return;
    }

    const parts = [`${fmtSeconds(elapsed)}`];
    if (firstToken !== null) parts.push(`first token ${fmtSeconds((firstToken - started) / 1000)}`);
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    if (outcome === "stopped") parts.unshift("stopped");
    answer.meta.textContent = parts.join(" · ");
    answer.turn.dataset.outcome = outcome;
    history.push({ role: "assistant", content: answer.body.textContent });
    $("prompt").focus();
  }

  function stop() {
    if (streaming) streaming.abort();
  }

  function clearChat() {
    if (streaming) return;
    history = [];
    renderEmptyHistory();
    clearMessage($("chat-message"));
    $("prompt").focus();
  }

  // ---------------------------------------------------------------- admin

  async function adminGet(path) {
    if (sessionExpired()) {
      signOut("Your session has expired. Sign in again to continue.");
      return null;
    }
    let resp;
    try {
      resp = await fetch(path, { headers: authHeaders(), credentials: "omit" });
    } catch (e) {
      showMessage($("admin-message"), `Could not reach the service: ${e.message}`);
      return null;
    }
    if (resp.ok) return resp.json();
    const err = await errorOf(resp);
    if (err.status === 401) signOut(describeError(err));
    else showMessage($("admin-message"), describeError(err));
    return null;
  }

  function startAdmin() {
    clearMessage($("admin-message"));
    refreshStats();
    loadKeys();
    loadConversations();
    stopStatsTimer();
    statsTimer = setInterval(refreshStats, STATS_REFRESH_MS);
  }

  function stopStatsTimer() {
    clearInterval(statsTimer);
    statsTimer = null;
  }

  async function refreshStats() {
    const stats = await adminGet("/admin/stats");
    if (!stats) return;
    const req = stats.requests || {};
    const lat = stats.latency_seconds || {};
    $("stat-chat-requests").textContent = fmtNumber(req.chat);
    $("stat-requests").textContent = fmtNumber(req.total);
    $("stat-errors").textContent = `${fmtNumber(req.client_errors)} / ${fmtNumber(req.server_errors)}`;
    $("stat-latency").textContent = [lat.p50, lat.p95, lat.p99].map(fmtSeconds).join(" / ");
    $("stat-queue").textContent = fmtNumber(stats.queue_depth);
    $("stat-inflight").textContent = fmtNumber(stats.inflight);
    $("stat-batch").textContent = fmtNumber(stats.mean_batch_size, 1);
    $("stat-cache").textContent = stats.cache_hit_rate === null || stats.cache_hit_rate === undefined
      ? "–" : `${fmtNumber(stats.cache_hit_rate * 100, 1)} %`;
    $("stat-tokens").textContent = fmtNumber((stats.tokens || {}).generated);
    $("stat-model").textContent = `${stats.model || "?"} · ${stats.ready ? "ready" : "not ready"}`;
    $("stat-uptime").textContent = fmtDuration(stats.uptime_seconds || 0);
    $("stats-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    if (className === "clip") td.title = text;
    return td;
  }

  function emptyRow(body, columns, text) {
    const tr = document.createElement("tr");
    const td = cell(text, "empty");
    td.colSpan = columns;
    tr.append(td);
    body.replaceChildren(tr);
  }

  async function loadKeys() {
    const payload = await adminGet("/admin/keys");
    if (!payload) return;
    const keys = payload.keys || [];
    const body = $("keys-body");
    if (!keys.length) {
      emptyRow(body, 5, "No keys.");
      return;
    }
    body.replaceChildren(
      ...keys.map((k) => {
        const tr = document.createElement("tr");
        tr.append(
          cell(String(k.id), "nowrap"),
          cell(k.scopes.join(", ")),
          cell(fmtDate(k.not_before)),
          cell(k.expires_at ? fmtDate(k.expires_at) : "–"),
          cell(fmtDate(k.last_used)),
        );
        return tr;
      }),
    );
  }

  function lastOf(messages, role) {
    if (!Array.isArray(messages)) return "";
    for (let i = messages.length - 1; i >= 0; i -= 1) {
      if (messages[i] && messages[i].role === role) return String(messages[i].content ?? "");
    }
    return "";
  }

  async function loadConversations() {
    const params = new URLSearchParams({ page: String(convPage), page_size: String(CONV_PAGE_SIZE) });
    if (convKey) params.set("key_id", convKey);
    const payload = await adminGet(`/admin/conversations?${params}`);
    if (!payload) return;
    const rows = payload.items || [];
    const body = $("conv-body");
    if (!rows.length) {
      emptyRow(body, 6, convKey ? `No conversations for key ${convKey}.` : "No conversations yet.");
    } else {
      body.replaceChildren(
        ...rows.map((c) => {
          const tr = document.createElement("tr");
          const usage = c.usage || {};
          const prompt = usage.prompt_tokens;
          const completion = usage.completion_tokens;
          tr.append(
            cell(fmtDate(c.created_at), "nowrap"),
            cell(String(c.key_id), "nowrap"),
            cell(String(c.route)),
            cell(lastOf(c.messages, "user"), "clip"),
            cell(String(c.answer), "clip"),
            cell(prompt === undefined && completion === undefined ? "–" : `${prompt ?? "?"} + ${completion ?? "?"}`),
          );
          return tr;
        }),
      );
    }
    const total = Number(payload.total);
    const pages = Number.isFinite(total) ? Math.max(1, Math.ceil(total / CONV_PAGE_SIZE)) : null;
    $("conv-page").textContent = pages ? `page ${convPage} of ${pages} · ${total} in all` : `page ${convPage}`;
    $("conv-prev").disabled = convPage <= 1;
    $("conv-next").disabled = pages ? convPage >= pages : rows.length < CONV_PAGE_SIZE;
  }

  // ---------------------------------------------------------------- wiring

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("composer").addEventListener("submit", send);
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("stop").addEventListener("click", stop);
    $("clear-chat").addEventListener("click", clearChat);
    $("nav-chat").addEventListener("click", () => showView("chat"));
    $("nav-admin").addEventListener("click", () => showView("admin"));
    $("sign-out").addEventListener("click", () => signOut("Signed out.", "info"));
    $("keys-refresh").addEventListener("click", loadKeys);
    $("conv-search").addEventListener("submit", (e) => {
      e.preventDefault();
      convKey = $("conv-key").value.trim();
      convPage = 1;
      loadConversations();
    });
    $("conv-prev").addEventListener("click", () => {
      if (convPage > 1) {
        convPage -= 1;
        loadConversations();
      }
    });
    $("conv-next").addEventListener("click", () => {
      convPage += 1;
      loadConversations();
    });
    showView("signin");
  });
})();
