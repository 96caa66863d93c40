// Parse Mermaid text with Mermaid's own parser and print what it understood, as JSON.
//
// Usage: node check_mermaid.mjs [--package mermaid|mermaid-11.4] FILE...
// Prints one JSON array: per file {file, ok, error?, type?, nodes?, edges?, messages?,
// actors?}: what Mermaid's renderer would lay out. Exit status 0 whether or not a diagram parsed (the caller judges).
// Mermaid needs a DOM to load (DOMPurify); jsdom provides one, no browser.
import fs from 'node:fs';
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const args = process.argv.slice(2);
let pkg = 'mermaid';
if (args[0] === '--package') {
  pkg = args[1];
  args.splice(0, 2);
}
const { default: mermaid } = await import(pkg);
mermaid.initialize({ startOnLoad: false, securityLevel: 'strict' });

async function check(file) {
  const text = fs.readFileSync(file, 'utf8');
  try {
    await mermaid.parse(text);
    const diagram = await mermaid.mermaidAPI.getDiagramFromText(text);
    const db = diagram.db;
    const out = { file, ok: true, type: diagram.type, version: mermaid.version ?? pkg };
    if (typeof db.getData === 'function' && diagram.type.startsWith('state')) {
      // getData() is what the renderer lays out: nodes (states, notes) and edges.
      const data = db.getData();
      out.nodes = {};
      for (const n of data.nodes) {
        out.nodes[n.id] = {
          label: n.label ?? '',
          description: n.description ?? [],
          shape: n.shape,
          parent: n.parentId ?? null,
          classes: n.cssClasses ?? '',
        };
      }
      out.edges = data.edges.map((e) => [e.start, e.end, e.label ?? '']);
    }
    if (typeof db.getMessages === 'function') {
      out.messages = db.getMessages().map((m) => [m.from ?? null, m.to ?? null, m.message ?? '']);
      out.actors = Object.fromEntries([...db.getActors()].map(([k, a]) => [k, a.description]));
    }
    return out;
  } catch (error) {
    return { file, ok: false, error: String(error?.message ?? error) };
  }
}

const results = [];
for (const file of args) results.push(await check(file));
process.stdout.write(JSON.stringify(results));
