#!/usr/bin/env bash
# Validates the deployment files in deploy/ (run by `make check-deploy` and `make test`):
#
#   deploy/k8s          every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate,
#                       strict: unknown fields are errors), the ServiceMonitor (a CRD the schemas
#                       do not know) by a minimal structural check, the PrometheusRule (its groups
#                       must equal deploy/prometheus/alerts.yaml's; every alert's runbook_url must
#                       name a section of docs/runbooks.md), the kustomization listing every
#                       file, cross-references between the manifests, and the kustomize rendering
#                       (when kubectl is installed) validated again.
#   deploy/prometheus   `promtool check rules` and the alert unit tests (`promtool test rules`).
#   deploy/grafana      the dashboard is JSON and each of its queries is valid PromQL (checked by
#                       promtool as recording rules).
#   deploy/docker       what the Dockerfile copies exists; with CHECK_DEPLOY_DOCKER=1 and a
#                       running Docker engine, the image is built too (slow: a full release build).
#
# Which metric names the dashboard and the alerts may use is checked against the binary by
# `cargo test -p tagstream --test deploy`.
#
# Installs what is missing: the kubernetes-validate Python package (pip --user) and promtool
# (Debian's `prometheus` package, with sudo when not root). Idempotent; a few seconds when the
# tools are present. Exits non-zero if any check fails, after running all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.30.0}"
PYTHON="${PYTHON:-python3}"
failures=0
passed=0

say() { printf 'check-deploy: %s\n' "$*"; }
ok() {
  say "ok: $*"
  passed=$((passed + 1))
}
fail() {
  printf 'check-deploy: FAILED: %s\n' "$*" >&2
  failures=$((failures + 1))
}
# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh

# ---- tools ------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || { echo "check-deploy: $PYTHON is required" >&2; exit 1; }
if ! "$PYTHON" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  # --user, except inside a virtualenv (where --user is refused); --break-system-packages only
  # if pip refuses an externally managed (Debian) Python.
  user="--user"
  "$PYTHON" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' && user=""
  say "installing kubernetes-validate (pip install ${user:-into the virtualenv})"
  "$PYTHON" -m pip install $user --quiet --disable-pip-version-check kubernetes-validate \
    || "$PYTHON" -m pip install $user --quiet --disable-pip-version-check \
         --break-system-packages kubernetes-validate
  "$PYTHON" -c 'import kubernetes_validate, yaml' \
    || { echo "check-deploy: kubernetes-validate is still not importable by $PYTHON" >&2; exit 1; }
fi
if ! command -v promtool >/dev/null; then
  apt_install "promtool, for the alert rules' unit tests" prometheus
  command -v promtool >/dev/null \
    || { echo "check-deploy: promtool is still missing after installing prometheus" >&2; exit 1; }
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- Kubernetes manifests ---------------------------------------------------------------------
# Custom resources (the ServiceMonitor) have no schema in kubernetes-validate, which would only
# warn about them: they are left to the structural check below instead.
schema_files=()
crd_files=()
for f in deploy/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  if grep -q '^apiVersion: monitoring.coreos.com/' "$f"; then
    crd_files+=("$f")
  else
    schema_files+=("$f")
  fi
done
if "$PYTHON" -m kubernetes_validate -k "$K8S_VERSION" --strict --quiet "${schema_files[@]}" \
  >"$work/validate.out" 2>&1; then
  ok "kubernetes-validate $K8S_VERSION --strict: ${#schema_files[@]} manifests valid"
else
  cat "$work/validate.out" >&2
  fail "manifests in deploy/k8s do not validate against Kubernetes $K8S_VERSION"
fi

# Kustomization coverage, the ServiceMonitor, and cross-references.
if ! "$PYTHON" - "${crd_files[@]}" <<'EOF'
import glob, os, sys
import yaml

errors = []
base = "deploy/k8s"
kust = yaml.safe_load(open(os.path.join(base, "kustomization.yaml")))
listed = set(kust.get("resources", []))
present = {os.path.basename(p) for p in glob.glob(os.path.join(base, "*.yaml"))} - {"kustomization.yaml"}
for f in sorted(present - listed):
    errors.append(f"{base}/{f} is not listed in kustomization.yaml resources")
for f in sorted(listed - present):
    errors.append(f"kustomization.yaml lists {f}, which does not exist")

docs = {}
for f in sorted(present):
    for d in yaml.safe_load_all(open(os.path.join(base, f))):
        if d:
            docs.setdefault(d["kind"], []).append((f, d))

def one(kind):
    items = docs.get(kind, [])
    if len(items) != 1:
        errors.append(f"expected one {kind}, found {len(items)}")
        return {}
    return items[0][1]

NAME = {"app.kubernetes.io/name": "tagstream"}
for kind, items in docs.items():
    for f, d in items:
        labels = d.get("metadata", {}).get("labels", {})
        if labels.get("app.kubernetes.io/name") != "tagstream":
            errors.append(f"{f}: {kind} lacks the label app.kubernetes.io/name: tagstream")

sts = one("StatefulSet")
pod = sts.get("spec", {}).get("template", {})
pod_labels = pod.get("metadata", {}).get("labels", {})
services = {d["metadata"]["name"]: d for _, d in docs.get("Service", [])}

# StatefulSet <-> headless Service.
headless = services.get(sts.get("spec", {}).get("serviceName"))
if headless is None or headless["spec"].get("clusterIP") != "None":
    errors.append("StatefulSet.spec.serviceName must name a headless Service (clusterIP: None)")
if sts.get("spec", {}).get("selector", {}).get("matchLabels") != NAME:
    errors.append("StatefulSet selector must be app.kubernetes.io/name: tagstream")
for name, svc in services.items():
    sel = svc["spec"].get("selector", {})
    if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
        errors.append(f"Service {name} selects no StatefulSet pod")
    if not any(p.get("name") == "http" and p.get("port") == 8080 for p in svc["spec"].get("ports", [])):
        errors.append(f"Service {name} has no port 8080 named http")
pdb = one("PodDisruptionBudget")
if pdb and any(pod_labels.get(k) != v for k, v in pdb["spec"]["selector"]["matchLabels"].items()):
    errors.append("the PodDisruptionBudget selects no StatefulSet pod")

# Pod spec: ports, probes, volumes, ConfigMap and Secret keys.
spec = pod.get("spec", {})
container = (spec.get("containers") or [{}])[0]
ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
if ports.get("http") != 8080:
    errors.append("the container needs port 8080 named http")
for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
    get = container.get(probe, {}).get("httpGet", {})
    if get.get("path") != path or get.get("port") not in ("http", 8080):
        errors.append(f"{probe} must be httpGet {path} on port http")
if spec.get("serviceAccountName") and spec["serviceAccountName"] not in {d["metadata"]["name"] for _, d in docs.get("ServiceAccount", [])}:
    errors.append(f"serviceAccountName {spec['serviceAccountName']} is not defined")
configmaps = {d["metadata"]["name"]: d for _, d in docs.get("ConfigMap", [])}
secrets = {d["metadata"]["name"]: d for _, d in docs.get("Secret", [])}
volumes = {v["name"] for v in spec.get("volumes", [])}
volumes |= {t["metadata"]["name"] for t in sts.get("spec", {}).get("volumeClaimTemplates", [])}
for m in container.get("volumeMounts", []):
    if m["name"] not in volumes:
        errors.append(f"volumeMount {m['name']} has no volume")
mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
if "/var/lib/tagstream" not in mounts or mounts["/var/lib/tagstream"] not in {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}:
    errors.append("/var/lib/tagstream must be a volumeClaimTemplate (one RocksDB volume per pod)")
def sources(v):
    if "configMap" in v: yield "configMap", v["configMap"]
    if "secret" in v: yield "secret", v["secret"]
    for s in v.get("projected", {}).get("sources", []):
        yield from sources(s)
for v in spec.get("volumes", []):
    for kind, ref in sources(v):
        name = ref.get("name") or ref.get("secretName")
        objs = configmaps if kind == "configMap" else secrets
        obj = objs.get(name)
        if obj is None:
            errors.append(f"volume {v['name']}: {kind} {name} is not defined")
            continue
        keys = set(obj.get("data", {}) or {}) | set(obj.get("stringData", {}) or {})
        for item in ref.get("items", []):
            if item["key"] not in keys:
                errors.append(f"volume {v['name']}: {kind} {name} has no key {item['key']}")
env = {e["name"]: e for e in container.get("env", [])}
iid = env.get("TAGSTREAM__SOURCE__OPTIONS__GROUP_INSTANCE_ID", {})
if iid.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
    errors.append("TAGSTREAM__SOURCE__OPTIONS__GROUP_INSTANCE_ID must come from metadata.name (static membership)")

# The ServiceMonitor (monitoring.coreos.com/v1): no schema here, so the fields that matter.
crds = sys.argv[1:]
monitors = docs.get("ServiceMonitor", [])
prometheus_rules = docs.get("PrometheusRule", [])
expected_crds = sorted(f"{base}/{f}" for f, _ in monitors + prometheus_rules)
if len(monitors) != 1 or len(prometheus_rules) != 1 or sorted(crds) != expected_crds:
    errors.append(f"expected one ServiceMonitor and one PrometheusRule file, the only custom resources; got {crds}")

# The PrometheusRule (monitoring.coreos.com/v1) carries exactly the groups of
# deploy/prometheus/alerts.yaml, the source of truth; every alert links its runbook section.
alerts = yaml.safe_load(open("deploy/prometheus/alerts.yaml"))
runbooks = open("docs/runbooks.md").read()
anchors = {l[3:].strip().lower() for l in runbooks.splitlines() if l.startswith("## ")}
for f, r in prometheus_rules:
    if r.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"{f}: apiVersion must be monitoring.coreos.com/v1")
    if set(r) - {"apiVersion", "kind", "metadata", "spec"} or set(r.get("spec", {})) != {"groups"}:
        errors.append(f"{f}: a PrometheusRule has apiVersion, kind, metadata and spec.groups only")
    if r.get("spec", {}).get("groups") != alerts.get("groups"):
        errors.append(f"{f}: spec.groups differs from deploy/prometheus/alerts.yaml groups; copy them over")
for group in alerts.get("groups", []):
    for rule in group.get("rules", []):
        if "alert" not in rule:
            continue
        url = rule.get("annotations", {}).get("runbook_url", "")
        anchor = url.rpartition("docs/runbooks.md#")[2] if "docs/runbooks.md#" in url else None
        if anchor != rule["alert"].lower() or anchor not in anchors:
            errors.append(f"alert {rule['alert']}: annotations.runbook_url must point at docs/runbooks.md#{rule['alert'].lower()}, a '## {rule['alert']}' section of docs/runbooks.md (got {url!r})")
for f, m in monitors:
    if m.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"{f}: apiVersion must be monitoring.coreos.com/v1")
    allowed = {"apiVersion", "kind", "metadata", "spec"}
    if set(m) - allowed:
        errors.append(f"{f}: unexpected top-level fields {sorted(set(m) - allowed)}")
    sel = m.get("spec", {}).get("selector", {}).get("matchLabels", {})
    matched = [n for n, s in services.items() if sel and all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    if len(matched) != 1:
        errors.append(f"{f}: spec.selector must match exactly one Service, matches {matched}")
    eps = m.get("spec", {}).get("endpoints", [])
    if not eps:
        errors.append(f"{f}: spec.endpoints is empty")
    ep_fields = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings"}
    for ep in eps:
        if set(ep) - ep_fields:
            errors.append(f"{f}: unexpected endpoint fields {sorted(set(ep) - ep_fields)}")
        if ep.get("path") != "/metrics":
            errors.append(f"{f}: endpoint path must be /metrics")
        if matched and not any(p.get("name") == ep.get("port") for p in services[matched[0]]["spec"]["ports"]):
            errors.append(f"{f}: endpoint port {ep.get('port')!r} is not a named port of Service {matched[0]}")

for e in errors:
    print(f"check-deploy: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
then
  fail "deploy/k8s: kustomization, ServiceMonitor, PrometheusRule, runbook or cross-reference errors (above)"
else
  ok "kustomization lists every file; ServiceMonitor, PrometheusRule (= alerts.yaml, runbooks linked) and cross-references consistent"
fi

# The kustomize rendering (namespace and image applied) validates too.
if command -v kubectl >/dev/null; then
  if kubectl kustomize deploy/k8s >"$work/rendered.yaml" 2>"$work/kustomize.err"; then
    "$PYTHON" - "$work/rendered.yaml" "$work/rendered-core.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
bad = [d["kind"] for d in docs if d["metadata"].get("namespace") != "tagstream"]
if bad:
    sys.exit(f"check-deploy: rendered objects without namespace tagstream: {bad}")
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
EOF
    if "$PYTHON" -m kubernetes_validate -k "$K8S_VERSION" --strict --quiet "$work/rendered-core.yaml" \
      >"$work/validate-rendered.out" 2>&1; then
      ok "kubectl kustomize deploy/k8s: $(grep -c '^kind:' "$work/rendered.yaml") objects, rendering validates"
    else
      cat "$work/validate-rendered.out" >&2
      fail "the kustomize rendering of deploy/k8s does not validate"
    fi
  else
    cat "$work/kustomize.err" >&2
    fail "kubectl kustomize deploy/k8s failed"
  fi
else
  say "kubectl not installed: kustomize rendering not checked"
fi

# ---- Prometheus rules ----------------------------------------------------------------------------
if promtool check rules deploy/prometheus/alerts.yaml >"$work/rules.out" 2>&1; then
  ok "promtool check rules: $(grep -o '[0-9]* rules found' "$work/rules.out")"
else
  cat "$work/rules.out" >&2
  fail "promtool check rules deploy/prometheus/alerts.yaml"
fi
if promtool test rules deploy/prometheus/alerts_test.yaml >"$work/rules-test.out" 2>&1; then
  ok "promtool test rules: alert unit tests pass"
else
  cat "$work/rules-test.out" >&2
  fail "promtool test rules deploy/prometheus/alerts_test.yaml"
fi

# ---- Grafana dashboard -------------------------------------------------------------------------
# Each query, with Grafana's variables replaced, becomes a recording rule for promtool to parse.
if "$PYTHON" - deploy/grafana/tagstream.json "$work/dashboard-rules.yaml" <<'EOF'
import json, re, sys
import yaml
dash = json.load(open(sys.argv[1]))
queries = []
def walk(v, key=None):
    if isinstance(v, dict):
        for k, x in v.items():
            walk(x, k)
    elif isinstance(v, list):
        for x in v:
            walk(x, key)
    elif isinstance(v, str) and key in ("expr", "query", "definition"):
        queries.append(v)
walk(dash)
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$namespace": ".*", "$pod": ".*", "$segment": ".*"}
rules = []
for q in queries:
    if q == "prometheus":  # the datasource variable's plugin type
        continue
    m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q.strip(), re.S)
    if m:
        q = m.group(1)
    for k, v in subst.items():
        q = q.replace(k, v)
    if "$" in q:
        sys.exit(f"check-deploy: unknown Grafana variable in {q!r}")
    rules.append({"record": f"dashboard:query_{len(rules)}", "expr": q})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
with open(sys.argv[2] + ".index", "w") as index:
    for r in rules:
        index.write(f"{r['record']}\t{' '.join(r['expr'].split())}\n")

EOF
then
  if promtool check rules "$work/dashboard-rules.yaml" >"$work/dash.out" 2>&1; then
    ok "grafana dashboard: $(grep -o '[0-9]* rules found' "$work/dash.out" | cut -d' ' -f1) queries parse as PromQL"
  else
    cat "$work/dash.out" >&2
    grep -o 'dashboard:query_[0-9]*' "$work/dash.out" | sort -u | while read -r rule; do
      grep -P "^$rule\t" "$work/dashboard-rules.yaml.index" | cut -f2 | sed "s/^/  $rule is: /" >&2
    done
    fail "deploy/grafana/tagstream.json has invalid PromQL (above)"
  fi
else
  fail "deploy/grafana/tagstream.json is not a readable dashboard"
fi

# ---- Docker image ------------------------------------------------------------------------------
dockerfile=deploy/docker/Dockerfile
before=$failures
while read -r src; do
  [ "$src" = . ] || [ -e "$src" ] || fail "$dockerfile copies $src, which does not exist"
done < <(awk '/^COPY / && !/--from=/ {for (i = 2; i < NF; i++) print $i}' "$dockerfile")
grep -q 'cargo build --release --locked -p tagstream' "$dockerfile" \
  || fail "$dockerfile does not run the release build (cargo build --release --locked -p tagstream)"
if ! grep -qsx 'target' .dockerignore; then
  fail ".dockerignore must exclude target"
fi
if [ "${CHECK_DEPLOY_DOCKER:-0}" = 1 ]; then
  if docker info >/dev/null 2>&1; then
    say "building the image (CHECK_DEPLOY_DOCKER=1)"
    if docker build -f "$dockerfile" -t tagstream:check-deploy . \
      && docker run --rm tagstream:check-deploy --version; then
      ok "docker build: the image runs tagstream"
    else
      fail "docker build -f $dockerfile, or running the image"
    fi
  else
    fail "CHECK_DEPLOY_DOCKER=1 but no Docker engine answers (docker info)"
  fi
else
  say "no image build (set CHECK_DEPLOY_DOCKER=1 with a running Docker engine to build it)"
fi
[ "$failures" = "$before" ] && ok "Dockerfile: release build command, copied sources and .dockerignore"

say "$passed passed, $failures failed"
[ "$failures" = 0 ]
