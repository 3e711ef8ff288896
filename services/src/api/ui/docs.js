// The API reference at /docs: fetches /openapi.json (served by the same process) and renders
// every operation: method, path, summary and description, security, parameters with their
// schema types, the request body schema and the responses. Written for this project; it loads
// nothing from anywhere but the API itself, so it works on machines without internet access.
"use strict";

(function () {
  // Relative to the page, so the API may sit behind a path prefix.
  const SPEC_URL = "openapi.json";
  const METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

  /** Creates an element; strings become text nodes (never HTML). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else el.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  /** Text with `code` spans as code elements (descriptions come from rustdoc-style comments). */
  function prose(text) {
    return String(text || "").split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
  }

  let spec = {};

  /** Follows a local `$ref` such as `#/components/schemas/RunView`. */
  function deref(obj) {
    let seen = 0;
    while (obj && obj.$ref && seen++ < 20) {
      const path = obj.$ref.replace(/^#\//, "").split("/");
      let target = spec;
      for (const p of path) target = target ? target[p.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined;
      if (!target) return obj;
      obj = target;
    }
    return obj;
  }

  function refName(schema) {
    return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
  }

  /** A one-line type of a schema: `string (uuid)`, `array of RunView`, `"a" | "b"`, ... */
  function typeText(schema) {
    if (!schema) return "any";
    const name = refName(schema);
    if (name) {
      const target = deref(schema);
      if (target && target.enum) return name + " (" + target.enum.map((v) => JSON.stringify(v)).join(" | ") + ")";
      return name;
    }
    for (const k of ["oneOf", "anyOf"]) {
      if (Array.isArray(schema[k])) return schema[k].map(typeText).join(" or ");
    }
    if (Array.isArray(schema.allOf)) return schema.allOf.map(typeText).join(" and ");
    if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    let types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
    const text = types.map((t) => {
      if (t === "array") return "array of " + typeText(schema.items);
      if (t === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object")
        return "map of " + typeText(schema.additionalProperties);
      return t;
    });
    let out = text.length ? text.join(" or ") : schema.properties ? "object" : "any";
    if (schema.format) out += " (" + schema.format + ")";
    return out;
  }

  /** Constraints worth showing next to a type. */
  function constraints(schema) {
    if (!schema) return "";
    const s = deref(schema);
    const parts = [];
    const add = (label, key) => {
      if (s[key] !== undefined && s[key] !== null) parts.push(label + " " + s[key]);
    };
    add("min", "minimum");
    add("max", "maximum");
    add("min length", "minLength");
    add("max length", "maxLength");
    add("pattern", "pattern");
    add("default", "default");
    if (s.example !== undefined) parts.push("example " + JSON.stringify(s.example));
    return parts.join(", ");
  }

  /** The object schema behind `schema`, merging `allOf` parts. */
  function objectOf(schema) {
    const s = deref(schema);
    if (!s) return null;
    if (Array.isArray(s.allOf)) {
      const merged = { properties: {}, required: [] };
      for (const part of s.allOf) {
        const o = objectOf(part);
        if (!o) continue;
        Object.assign(merged.properties, o.properties || {});
        merged.required.push(...(o.required || []));
      }
      return Object.keys(merged.properties).length ? merged : null;
    }
    if (s.properties) return s;
    if (Array.isArray(s.oneOf) || Array.isArray(s.anyOf)) {
      // `Option<T>` comes out as oneOf [null, T]: show T's fields.
      const alts = (s.oneOf || s.anyOf).filter((a) => deref(a).type !== "null");
      if (alts.length === 1) return objectOf(alts[0]);
    }
    return null;
  }

  /** A table of an object schema's fields, nested objects expanded to `depth` levels. */
  function schemaTable(schema, depth, seen) {
    const obj = objectOf(schema);
    if (!obj) return h("p", { class: "schema-type" }, h("code", {}, typeText(schema)), " ", h("span", { class: "muted" }, constraints(schema)));
    const required = new Set(obj.required || []);
    const rows = [];
    for (const [name, prop] of Object.entries(obj.properties)) {
      const p = deref(prop);
      const nested = depth > 0 && objectOf(prop.items || prop) && !seen.has(refName(prop.items || prop));
      const cell = [h("code", {}, typeText(prop))];
      const c = constraints(prop);
      if (c) cell.push(h("div", { class: "muted" }, c));
      const desc = [prose(p.description || prop.description || "")];
      if (nested) {
        const next = new Set(seen);
        if (refName(prop.items || prop)) next.add(refName(prop.items || prop));
        desc.push(h("details", {}, h("summary", {}, "fields"), schemaTable(prop.items || prop, depth - 1, next)));
      }
      rows.push(h("tr", {},
        h("td", {}, h("code", {}, name), required.has(name) ? h("span", { class: "req" }, " required") : ""),
        h("td", {}, cell),
        h("td", {}, desc)));
    }
    return h("table", { class: "fields" },
      h("thead", {}, h("tr", {}, h("th", {}, "Field"), h("th", {}, "Type"), h("th", {}, "Description"))),
      h("tbody", {}, rows));
  }

  function schemaBlock(schema) {
    const name = refName(schema) || refName(deref(schema) && deref(schema).items);
    const seen = new Set(name ? [name] : []);
    return h("div", { class: "schema" },
      h("div", { class: "schema-name" }, h("code", {}, typeText(schema))),
      schemaTable(schema, 2, seen));
  }

  function anchor(method, path) {
    return "op-" + method + "-" + path.replace(/[^A-Za-z0-9]+/g, "-");
  }

  function securityText(op) {
    const sec = op.security !== undefined ? op.security : spec.security;
    if (!sec || !sec.length) return "no credentials";
    return sec.map((req) => {
      const entries = Object.entries(req);
      if (!entries.length) return "no credentials";
      return entries.map(([scheme, scopes]) => scheme + (scopes.length ? " (" + scopes.join(", ") + ")" : "")).join(" + ");
    }).join(" or ");
  }

  function renderParameters(params) {
    if (!params.length) return null;
    return h("section", {},
      h("h4", {}, "Parameters"),
      h("table", { class: "fields" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "In"), h("th", {}, "Type"), h("th", {}, "Description"))),
        h("tbody", {}, params.map((raw) => {
          const p = deref(raw);
          const c = constraints(p.schema);
          return h("tr", {},
            h("td", {}, h("code", {}, p.name), p.required ? h("span", { class: "req" }, " required") : ""),
            h("td", {}, p.in),
            h("td", {}, h("code", {}, typeText(p.schema)), c ? h("div", { class: "muted" }, c) : ""),
            h("td", {}, prose(p.description)));
        }))));
  }

  function renderContent(content) {
    return Object.entries(content || {}).map(([type, media]) =>
      h("div", {}, h("div", { class: "muted" }, type), media.schema ? schemaBlock(media.schema) : ""));
  }

  function renderBody(body) {
    if (!body) return null;
    const b = deref(body);
    return h("section", {},
      h("h4", {}, "Request body", b.required ? h("span", { class: "req" }, " required") : h("span", { class: "muted" }, " optional")),
      b.description ? h("p", {}, prose(b.description)) : "",
      renderContent(b.content));
  }

  function renderResponses(responses) {
    const entries = Object.entries(responses || {});
    if (!entries.length) return null;
    return h("section", {},
      h("h4", {}, "Responses"),
      entries.map(([status, raw]) => {
        const r = deref(raw);
        const schemas = Object.values(r.content || {}).filter((m) => m.schema);
        const cls = "status s" + String(status).charAt(0);
        return h("details", { class: "response", open: String(status).startsWith("2") ? "" : false },
          h("summary", {}, h("span", { class: cls }, status), " ", prose(r.description),
            schemas.length ? h("code", { class: "muted" }, " " + typeText(schemas[0].schema)) : ""),
          renderContent(r.content));
      }));
  }

  function renderOperation(method, path, op, pathParams) {
    const params = [...pathParams, ...(op.parameters || [])];
    return h("article", { class: "operation", id: anchor(method, path) },
      h("h3", {},
        h("span", { class: "method m-" + method }, method.toUpperCase()), " ",
        h("code", { class: "path" }, path)),
      op.summary ? h("p", { class: "summary" }, prose(op.summary)) : "",
      op.description && op.description !== op.summary ? h("p", { class: "description" }, prose(op.description)) : "",
      h("p", { class: "muted" }, "Auth: " + securityText(op), op.operationId ? " \u00b7 operationId " + op.operationId : ""),
      renderParameters(params),
      renderBody(op.requestBody),
      renderResponses(op.responses));
  }

  function render() {
    const main = document.getElementById("reference");
    const toc = document.getElementById("toc");
    main.textContent = "";
    toc.textContent = "";
    const info = spec.info || {};
    document.title = (info.title || "API") + " reference";
    main.append(h("section", { class: "intro" },
      h("h2", {}, info.title || "API", info.version ? h("span", { class: "muted" }, " " + info.version) : ""),
      info.description ? h("p", {}, prose(info.description)) : "",
      h("p", { class: "muted" }, "OpenAPI " + (spec.openapi || "?") + ". Send tokens as ",
        h("code", {}, "Authorization: Bearer <token>"), ".")));

    // Group by first tag, in the order the document declares its tags.
    const groups = new Map((spec.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
    let count = 0;
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        count++;
        const tag = (op.tags && op.tags[0]) || "other";
        if (!groups.has(tag)) groups.set(tag, { tag: { name: tag }, ops: [] });
        groups.get(tag).ops.push({ method, path, op, pathParams: item.parameters || [] });
      }
    }
    for (const { tag, ops } of groups.values()) {
      if (!ops.length) continue;
      toc.append(h("h4", {}, tag.name));
      toc.append(h("ul", {}, ops.map(({ method, path }) =>
        h("li", {}, h("a", { href: "#" + anchor(method, path) },
          h("span", { class: "method m-" + method }, method.toUpperCase()), " ", path)))));
      main.append(h("section", { class: "tag" },
        h("h2", {}, tag.name),
        tag.description ? h("p", { class: "muted" }, prose(tag.description)) : "",
        ops.map(({ method, path, op, pathParams }) => renderOperation(method, path, op, pathParams))));
    }
    main.dataset.operations = String(count);
    if (location.hash) {
      const target = document.getElementById(location.hash.slice(1));
      if (target) target.scrollIntoView();
    }
  }

  fetch(SPEC_URL, { headers: { Accept: "application/json" } })
    .then((r) => {
      if (!r.ok) throw new Error(SPEC_URL + " answered " + r.status);
      return r.json();
    })
    .then((doc) => {
      spec = doc;
      render();
    })
    .catch((e) => {
      const main = document.getElementById("reference");
      main.textContent = "";
      main.append(h("p", { class: "error" }, "Could not load the API description: " + e.message));
    });
})();
