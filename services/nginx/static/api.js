// Renders /openapi.json as a page: no framework, nothing fetched from the internet.
"use strict";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.oneOf) return schema.oneOf.map(schemaText).join(" | ");
  if (schema.anyOf) return schema.anyOf.map(schemaText).join(" | ");
  if (schema.allOf) return schema.allOf.map(schemaText).join(" & ");
  if (schema.type === "array") return `array of ${schemaText(schema.items)}`;
  if (schema.type === "object" && schema.properties) {
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties).map(
      ([name, field]) => `${name}${required.has(name) ? "" : "?"}: ${schemaText(field)}`);
    return `{ ${fields.join(", ")} }`;
  }
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;  // OpenAPI 3.1: ["string", "null"]
  return schema.enum ? `${type} (${schema.enum.join(", ")})` : (schema.format ? `${type} (${schema.format})` : type);
}

function operationBlock(path, method, operation) {
  const block = element("section");
  block.id = operation.operationId;
  block.append(element("h2", `${method.toUpperCase()} ${path}`));
  block.append(element("p", operation.summary));
  const table = element("table");
  const row = (label, value) => {
    const tr = element("tr");
    tr.append(element("th", label), element("td", value));
    table.append(tr);
  };
  for (const parameter of operation.parameters || []) {
    row(parameter.in === "header" ? `header ${parameter.name}` : `?${parameter.name}`, `${parameter.required ? "required" : "optional"} — ${parameter.description || schemaText(parameter.schema)}`);
  }
  if (operation.requestBody) {
    for (const [type, content] of Object.entries(operation.requestBody.content)) {
      row(`body ${type}`, schemaText(content.schema));
    }
  }
  for (const [status, response] of Object.entries(operation.responses)) {
    const types = Object.entries(response.content || {}).map(([type, c]) => `${type}: ${schemaText(c.schema)}`);
    row(status, [response.description, ...types].join(" — "));
  }
  block.append(table);
  return block;
}

async function render() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  document.getElementById("description").textContent = spec.info.description;
  const operations = document.getElementById("operations");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      operations.append(operationBlock(path, method, operation));
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(spec.components.schemas)) {
    const block = element("p");
    block.append(element("code", name), document.createTextNode(` ${schemaText(schema)}`));
    schemas.append(block);
  }
}

render().catch((error) => {
  document.getElementById("description").textContent = `could not load /openapi.json: ${error}`;
});
