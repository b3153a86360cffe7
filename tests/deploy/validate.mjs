// Validates Kubernetes objects offline against the schemas of the npm
// packages kubernetes-models (the Kubernetes API) and
// @kubernetes-models/prometheus-operator (ServiceMonitor, PrometheusRule).
//
//   node validate.mjs NODE_MODULES_DIR < objects.json
//
// stdin: a JSON array of objects. Prints one line per object ("ok KIND
// NAME" or "INVALID KIND NAME: errors") and exits 1 if any object is
// invalid or of a kind neither package models.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(process.argv[2].replace(/\/?$/, "/"));
const objects = JSON.parse(readFileSync(0, "utf8"));
let bad = 0;
for (const obj of objects) {
  const name = `${obj.kind} ${obj.metadata && obj.metadata.name}`;
  const [group, version] = obj.apiVersion.includes("/")
    ? obj.apiVersion.split("/")
    : ["", obj.apiVersion];
  const module =
    group === "monitoring.coreos.com"
      ? `@kubernetes-models/prometheus-operator/${group}/${version}/${obj.kind}`
      : `kubernetes-models/${group ? group + "/" : ""}${version}/${obj.kind}`;
  let Model;
  try {
    Model = require(module)[obj.kind];
  } catch (e) {
    console.log(`INVALID ${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
    bad++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok ${name}`);
  } catch (e) {
    console.log(`INVALID ${name}: ${String(e.message).slice(0, 2000)}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
