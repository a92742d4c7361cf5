// tagrun web UI: live refresh, the agent drawer, settings, actions, logs and schedules.
// Everything a user or a job wrote reaches the page as text (textContent, createTextNode),
// never as markup; the Content-Security-Policy forbids inline scripts anyway.
"use strict";

(function () {
  const body = document.body;
  const csrf = () => body.dataset.csrf || "";

  // ---- small helpers ---------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function toast(message, kind) {
    const box = document.querySelector("[data-toasts]");
    if (!box) return;
    const item = el("div", { class: "toast " + (kind || "info"), role: "status", text: message });
    box.append(item);
    setTimeout(() => item.remove(), 6000);
  }

  async function api(method, url, payload) {
    const headers = { "Accept": "application/json", "X-CSRF-Token": csrf() };
    const init = { method, headers, credentials: "same-origin" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const response = await fetch(url, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.error && data.error.message) || response.statusText);
      error.status = response.status;
      error.code = data && data.error && data.error.code;
      throw error;
    }
    return data;
  }

  function onClick(selector, handler) {
    document.addEventListener("click", (event) => {
      const target = event.target instanceof Element ? event.target.closest(selector) : null;
      if (target) handler(event, target);
    });
  }

  // ---- live refresh: fetch this page again and swap its [data-live] sections ------------

  let refreshTimer = null;
  let refreshing = false;

  function busy(section) {  // never replace what the user is typing into
    const active = document.activeElement;
    return (active && section.contains(active) && active.matches("input, select, textarea"))
      || section.querySelector("[data-editing]") !== null;
  }

  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const response = await fetch(location.href, { credentials: "same-origin",
                                                     headers: { "Accept": "text/html" } });
      if (response.redirected && new URL(response.url).pathname === "/signin") {
        location.assign(response.url);
        return;
      }
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const section of fresh.querySelectorAll("[data-live][id]")) {
        const current = document.getElementById(section.id);
        if (current && !busy(current)) current.replaceWith(document.importNode(section, true));
      }
      for (const key of ["refreshMs", "jobStatus"]) {
        if (fresh.body.dataset[key] !== undefined) body.dataset[key] = fresh.body.dataset[key];
        else delete body.dataset[key];
      }
      body.classList.remove("offline");
    } catch (_) {
      body.classList.add("offline");
    } finally {
      refreshing = false;
      schedule();
    }
  }

  // A page refreshes while it is seen, unless its auto-refresh box is unticked.
  const autoRefresh = document.querySelector("[data-auto-refresh]");

  function paused() {
    return document.hidden || (autoRefresh !== null && !autoRefresh.checked);
  }

  function schedule() {
    clearTimeout(refreshTimer);
    const every = Number(body.dataset.refreshMs || 0);
    if (every > 0 && !paused()) refreshTimer = setTimeout(refresh, every);
    if (logs && body.dataset.jobStatus && !logs.running) logs.start();
  }

  function resume() {
    if (paused()) clearTimeout(refreshTimer);
    else if (Number(body.dataset.refreshMs || 0) > 0) refreshNow();
  }

  document.addEventListener("visibilitychange", resume);
  if (autoRefresh) autoRefresh.addEventListener("change", resume);

  function refreshNow() {
    clearTimeout(refreshTimer);
    return refresh();
  }

  // ---- actions: buttons that POST or DELETE through the API ------------------------------

  async function act(button, method, url) {
    const question = button.dataset.confirm;
    if (question && !window.confirm(question)) return;
    button.disabled = true;
    try {
      const answer = await api(method, url);
      if (button.hasAttribute("data-open-job") && answer && answer.id) {  // e.g. Run again
        location.assign(`/w/${encodeURIComponent(body.dataset.workspace)}/jobs/${answer.id}`);
        return;
      }
      toast(button.textContent.trim() + ": done", "ok");
      await refreshNow();
    } catch (error) {
      toast(error.message, "error");
      button.disabled = false;
    }
  }

  onClick("[data-api-post]", (e, b) => act(b, "POST", b.dataset.apiPost));
  // Pause and drain ask why first (the note is shown with the agent's state).
  onClick("[data-api-note]", async (e, button) => {
    const note = window.prompt(button.dataset.prompt || "Why?");
    if (note === null) return;
    button.disabled = true;
    try {
      await api("POST", button.dataset.apiNote, { note: note.trim() });
      toast(button.textContent.trim() + ": done", "ok");
      await refreshNow();
    } catch (error) {
      toast(error.message, "error");
      button.disabled = false;
    }
  });
  onClick("[data-api-delete]", (e, b) => act(b, "DELETE", b.dataset.apiDelete));

  // ---- workspace picker -------------------------------------------------------------------

  document.addEventListener("change", (event) => {
    const select = event.target;
    if (select instanceof HTMLSelectElement && select.hasAttribute("data-autosubmit")) {
      select.form.submit();
    }
  });

  // ---- settings, edited in place ---------------------------------------------------------

  onClick("[data-edit-setting]", (event, button) => {
    const card = button.closest("[data-setting]");
    const form = card.querySelector("[data-setting-form]");
    form.hidden = false;
    form.setAttribute("data-editing", "");
    button.hidden = true;
    form.querySelector("input[name=value]").focus();
  });

  function closeEditor(card) {
    const form = card.querySelector("[data-setting-form]");
    form.hidden = true;
    form.removeAttribute("data-editing");
    card.querySelector("[data-edit-setting]").hidden = false;
  }

  onClick("[data-cancel-edit]", (event, button) => closeEditor(button.closest("[data-setting]")));

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.hasAttribute("data-setting-form")) {
      event.preventDefault();
      const key = form.closest("[data-setting]").dataset.setting;
      const raw = form.elements.namedItem("value").value.trim();
      const error = form.querySelector("[data-form-error]");
      error.textContent = "";
      if (!/^\d+$/.test(raw)) {
        error.textContent = "A whole number from 0 (no limit) up.";
        return;
      }
      try {
        await api("PUT", "/api/settings", { key, value: Number(raw) });
        closeEditor(form.closest("[data-setting]"));
        toast(key + " = " + raw, "ok");
        await refreshNow();
      } catch (err) {
        error.textContent = err.message;
      }
    } else if (form.hasAttribute("data-mint-form")) {
      event.preventDefault();
      await mint(form);
    }
  });

  // ---- the "+ New agent worker" drawer --------------------------------------------------

  function drawer() { return document.getElementById("new-agent"); }

  function openDrawer() {
    const d = drawer();
    d.querySelector("[data-mint-form]").hidden = false;
    d.querySelector("[data-mint-result]").hidden = true;
    d.hidden = false;
    body.classList.add("drawer-open");
    d.querySelector("input[name=tags]").focus();
  }

  function closeDrawer() {
    const d = drawer();
    d.hidden = true;
    body.classList.remove("drawer-open");
    d.querySelector("[data-token]").textContent = "";  // the token is shown once
    for (const pre of d.querySelectorAll("[data-snippet]")) pre.textContent = "";
    d.querySelector("[data-mint-form]").reset();
  }

  onClick("[data-open-drawer]", () => openDrawer());
  onClick("[data-close-drawer]", () => closeDrawer());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && drawer() && !drawer().hidden) closeDrawer();
  });

  function snippets(token) {
    const base = body.dataset.baseUrl || location.origin;
    return {
      bash: ["export MODE=agent", `export AGENT_TOKEN='${token}'`,
             `export BASE_INTERNAL_URL='${base}'`, "tagrun-agent"].join("\n"),
      powershell: ["$env:MODE = 'agent'", `$env:AGENT_TOKEN = '${token}'`,
                   `$env:BASE_INTERNAL_URL = '${base}'`, ".\\tagrun-agent.exe"].join("\n"),
    };
  }

  // Max jobs: left out when empty (unlimited); anything else goes as typed, and the server
  // says what is wrong with it.
  function maxJobs(form) {
    const raw = form.elements.namedItem("max_jobs").value.trim();
    return raw ? { max_jobs: /^-?\d+$/.test(raw) ? Number(raw) : raw } : {};
  }

  async function mint(form) {
    const error = form.querySelector("[data-form-error]");
    error.textContent = "";
    const group = form.elements.namedItem("group").value.trim();
    const tags = form.elements.namedItem("tags").value.split(/[\s,]+/).filter(Boolean);
    if (!group) { error.textContent = "Give the agent a group."; return; }
    if (!tags.length) { error.textContent = "Give at least one tag."; return; }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const minted = await api("POST", "/api/agent_tokens", {
        group, tags, label: form.elements.namedItem("label").value.trim(),
        expires_in_s: Number(form.elements.namedItem("expires_in_s").value),
        ...maxJobs(form),
      });
      const d = drawer();
      d.querySelector("[data-token]").textContent = minted.token;
      const text = snippets(minted.token);
      for (const pre of d.querySelectorAll("[data-snippet]")) {
        pre.textContent = text[pre.dataset.snippet];
      }
      form.hidden = true;
      d.querySelector("[data-mint-result]").hidden = false;
      refreshNow();
    } catch (err) {
      error.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  onClick("[data-tab]", (event, tab) => {
    const panel = tab.closest("[data-mint-result]");
    for (const t of panel.querySelectorAll("[data-tab]")) t.classList.toggle("active", t === tab);
    for (const pre of panel.querySelectorAll("[data-snippet]")) {
      pre.hidden = pre.dataset.snippet !== tab.dataset.tab;
    }
  });

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {  // not a secure context (plain http to another host): select it instead
      const area = el("textarea", { class: "offscreen", readonly: true });
      area.value = text;
      body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  }

  onClick("[data-copy]", (event, button) => {
    copyText(document.querySelector(button.dataset.copy).textContent, button);
  });
  onClick("[data-copy-snippet]", (event, button) => {
    const shown = button.closest("[data-mint-result]").querySelector("[data-snippet]:not([hidden])");
    copyText(shown.textContent, button);
  });

  // ---- job logs, streamed by offset while the job runs ---------------------------------

  const FINAL = ["succeeded", "failed", "cancelled"];

  // The API gives the log's complete lines, each with its time and stream; a line still being
  // written is shown as it is so far, and read again, whole, once it is complete.
  function pad(n, width) { return String(n).padStart(width || 2, "0"); }

  function logLine(entry) {
    const line = el("div", { class: "log-line" + (entry.stream ? " " + entry.stream : ""),
                             "data-stream": entry.stream });
    if (entry.at) {
      const at = new Date(entry.at);
      const clock = `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`;
      const day = `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}`;
      line.append(el("time", { datetime: entry.at, text: clock,
                               title: `${day} ${clock}.${pad(at.getMilliseconds(), 3)} local · ` +
                                      `${entry.at.replace("T", " ").replace("Z", " UTC")}` }));
    } else {
      line.append(el("time", {}));
    }
    line.append(el("span", { class: "log-text", text: entry.text }));
    return line;
  }

  class LogStream {
    constructor(pre) {
      this.pre = pre;
      this.url = pre.dataset.logsUrl;
      this.offset = 0;  // where the next read begins: where the complete lines end
      this.end = -1;  // where the log ended at the last read
      this.partial = null;  // the line still being written, as shown
      this.running = false;
      this.state = document.querySelector("[data-log-state]");
      this.follow = document.querySelector("[data-follow]");
    }

    start() {
      if (this.running) return;
      this.running = true;
      this.loop();
    }

    show(got) {
      const atBottom = this.pre.scrollHeight - this.pre.scrollTop - this.pre.clientHeight < 40;
      if (this.partial) this.partial.remove();
      this.partial = null;
      const lines = document.createDocumentFragment();
      for (const entry of got.lines) lines.append(logLine(entry));
      if (got.lines_end < got.offset) {  // offsets count code points, as Array.from does
        const rest = Array.from(got.data).slice(got.lines_end - this.offset).join("");
        this.partial = logLine({ text: rest, at: null, stream: null });
        this.partial.classList.add("partial");
        lines.append(this.partial);
      }
      this.pre.append(lines);
      if (this.follow && this.follow.checked && atBottom) this.pre.scrollTop = this.pre.scrollHeight;
    }

    async loop() {
      while (this.running) {
        let got = null;
        try {
          got = await api("GET", `${this.url}?offset=${this.offset}`);
        } catch (error) {
          if (error.status === 401) { location.reload(); return; }
          this.state.textContent = "reconnecting…";
          await new Promise((r) => setTimeout(r, 2000));
          continue;
        }
        this.show(got);
        const moved = got.offset !== this.end;
        this.end = got.offset;
        this.offset = got.lines_end;
        const final = FINAL.includes(body.dataset.jobStatus);
        if (got.done && final) {
          this.state.textContent = this.end ? "complete" : "no output";
          this.state.className = "log-state done";
          this.running = false;
          return;
        }
        this.state.textContent = "live";
        this.state.className = "log-state live";
        if (got.done && !final) refreshNow();  // the logs ended: the status is about to change
        if (!moved) await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  const logsPre = document.querySelector("[data-logs]");
  const logs = logsPre ? new LogStream(logsPre) : null;
  if (logs) logs.start();

  // ---- schedules, read from GET /api/w/{ws}/schedules ----------------------------------

  function fireTime(value) {
    if (value && typeof value === "object") {
      value = value.at || value.fire_at || value.scheduled_for || value.fired_at
        || value.run_at || value.created_at || "";
    }
    if (!value) return "—";
    const date = new Date(value);
    return isNaN(date) ? String(value) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function lastRun(run, workspace) {
    if (!run || typeof run !== "object") return el("div", { text: fireTime(run) });
    const id = run.job_id !== undefined ? run.job_id : run.id;
    const status = String(run.status || (id === null || id === undefined ? "skipped" : ""));
    const item = el("div", { class: "run", title: run.message || null },
                    el("span", { class: "badge s-" + status.replace(/[^a-z_]/g, ""), text: status || "run" }),
                    " ", fireTime(run));
    if (id !== null && id !== undefined && /^\d+$/.test(String(id))) {
      item.append(" ", el("a", { class: "mono", href: `/w/${encodeURIComponent(workspace)}/jobs/${id}`,
                                 text: "#" + id }));
    }
    return item;
  }

  function scheduleRow(s, workspace, url) {
    const next = (s.next_fires || []).slice(0, 3).map((t) => el("div", { text: fireTime(t) }));
    const runs = (s.last_runs || []).slice(0, 3).map((r) => lastRun(r, workspace));
    const toggle = el("input", { type: "checkbox", "aria-label": "enabled", checked: !!s.enabled,
                                 "data-schedule-toggle": s.name });
    toggle.addEventListener("change", async () => {
      toggle.disabled = true;
      try {
        await api("PATCH", `${url}/${encodeURIComponent(s.name)}`, { enabled: toggle.checked });
        toast(`${s.name}: ${toggle.checked ? "enabled" : "disabled"}`, "ok");
      } catch (error) {
        toggle.checked = !toggle.checked;
        toast(error.message, "error");
      } finally {
        toggle.disabled = false;
      }
    });
    return el("tr", { "data-schedule": s.name },
      el("td", {}, el("span", { class: "mono strong", text: s.name }),
         s.builtin ? el("span", { class: "badge s-builtin", text: "built-in" }) : null),
      el("td", {}, s.builtin
        ? el("span", { class: "description", text: s.description || "maintenance" })
        : el("span", { class: "mono", text: s.script || "" })),
      el("td", { class: "mono", text: s.cron || "" }),
      el("td", { text: s.timezone || "UTC" }),
      el("td", {}, el("span", { class: "tag", text: s.overlap || "" })),
      el("td", { class: "times" }, ...(next.length ? next : ["—"])),
      el("td", { class: "times" }, ...(runs.length ? runs : ["—"])),
      el("td", {}, el("label", { class: "switch" }, toggle, el("span", { class: "slider" }))));
  }

  async function loadSchedules(url, cursor) {
    const state = document.querySelector("[data-schedules-state]");
    const table = document.querySelector("[data-schedules-table]");
    const rows = document.querySelector("[data-schedules]");
    const more = document.querySelector("[data-schedules-more]");
    const pager = document.querySelector("[data-schedules-pager]");
    const workspace = body.dataset.workspace;
    let data;
    try {
      data = await api("GET", url + "?limit=100" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    } catch (error) {
      state.textContent = error.status === 404 && error.code === "not_found"
        ? "Schedules are not available on this server yet."
        : "Could not load schedules: " + error.message;
      state.hidden = false;
      return;
    }
    const list = Array.isArray(data) ? data : (data.schedules || []);
    for (const s of list) rows.append(scheduleRow(s, workspace, url));
    const any = rows.children.length > 0;
    table.hidden = !any;
    state.hidden = any;
    state.textContent = any ? "" : "No schedule in this workspace yet.";
    const next = data && data.next_cursor;
    pager.hidden = !next;
    more.dataset.cursor = next || "";
  }

  onClick("[data-schedules-more]", (event, button) => {
    if (button.dataset.cursor) loadSchedules(body.dataset.schedulesUrl, button.dataset.cursor);
  });

  if (body.dataset.schedulesUrl) loadSchedules(body.dataset.schedulesUrl, null);

  // ---- secrets: names, scope and times; set and delete; a value is never shown back --------

  function secretRow(s, url) {
    const remove = el("button", { type: "button", class: "small danger", text: "Delete" });
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Delete secret ${s.name}? Jobs that name it will be refused.`)) return;
      remove.disabled = true;
      try {
        await api("DELETE", `${url}/${encodeURIComponent(s.name)}`);
        toast(`${s.name} deleted`, "ok");
        loadSecrets(url);
      } catch (error) {
        remove.disabled = false;
        toast(error.message, "error");
      }
    });
    const rescope = el("button", { type: "button", class: "small ghost", text: "Change tags" });
    rescope.addEventListener("click", async () => {
      const answer = window.prompt(`Tags whose jobs may use ${s.name}, comma-separated ` +
                                   "(empty: any tag). Its value stays.",
                                   (s.allowed_tags || []).join(", "));
      if (answer === null) return;
      const tags = answer.split(",").map((t) => t.trim()).filter((t) => t);
      rescope.disabled = true;
      try {
        await api("PATCH", `${url}/${encodeURIComponent(s.name)}`,
                  { allowed_tags: tags.length ? tags : null });
        toast(`${s.name}: ${tags.length ? tags.join(", ") : "any tag"}`, "ok");
        loadSecrets(url);
      } catch (error) {
        rescope.disabled = false;
        toast(error.message, "error");
      }
    });
    const scope = s.allowed_tags === null || s.allowed_tags === undefined
      ? el("span", { class: "muted", text: "any tag" })
      : el("span", {}, ...s.allowed_tags.map((t) => el("span", { class: "tag", text: t })));
    return el("tr", { "data-secret": s.name },
      el("td", {}, el("span", { class: "mono strong", text: s.name })),
      el("td", {}, scope),
      el("td", { class: "times" }, el("div", { text: fireTime(s.created_at) }),
         el("div", { class: "muted", text: s.created_by })),
      el("td", { class: "times" }, el("div", { text: fireTime(s.updated_at) }),
         el("div", { class: "muted", text: s.updated_by })),
      el("td", { class: "actions" }, rescope, " ", remove));
  }

  async function loadSecrets(url) {
    const state = document.querySelector("[data-secrets-state]");
    const table = document.querySelector("[data-secrets-table]");
    const rows = document.querySelector("[data-secrets]");
    let data;
    try {
      data = await api("GET", url);
    } catch (error) {
      state.textContent = "Could not load secrets: " + error.message;
      state.hidden = false;
      return;
    }
    rows.replaceChildren(...(data.secrets || []).map((s) => secretRow(s, url)));
    const any = rows.children.length > 0;
    table.hidden = !any;
    state.hidden = any;
    state.textContent = any ? "" : "No secret in this workspace yet.";
  }

  const secretForm = document.querySelector("[data-secret-form]");
  if (secretForm && body.dataset.secretsUrl) {
    const url = body.dataset.secretsUrl;
    secretForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = secretForm.elements.name.value.trim();
      const tags = secretForm.elements.allowed_tags.value.split(",").map((t) => t.trim())
        .filter((t) => t);
      const payload = { value: secretForm.elements.value.value };
      if (tags.length) payload.allowed_tags = tags;
      const button = secretForm.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        await api("PUT", `${url}/${encodeURIComponent(name)}`, payload);
        secretForm.reset();  // the value leaves the page at once
        toast(`${name} set`, "ok");
        loadSecrets(url);
      } catch (error) {
        toast(error.message, "error");
      } finally {
        button.disabled = false;
      }
    });
    loadSecrets(url);
  }

  schedule();
})();
