#!/usr/bin/env bash
# Builds the real Kubernetes control plane the e2e tests run against (tests/e2e/), from the Go
# module proxy, into a cache outside the repository keyed by component and version, so only the
# first run on a machine pays. Prints, on stdout, the one directory holding every binary.
#
#   hack/control-plane/build.sh            build what is missing, print the bin directory
#   hack/control-plane/build.sh knative kserve keda
#                                          the Knative Serving controller and webhook, KServe's
#                                          manager, KEDA's ScaledObject CRD (e2e tests of those)
#
# Components: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from
# k8s.io/kubernetes; etcd from go.etcd.io/etcd/server/v3; kwok (fake kubelet) from sigs.k8s.io/kwok.
# Needs Go (go.mod of each component says which) and the module proxy; no cgo, no C toolchain.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io/* staging module with
# ./staging/src/..., which the module zip does not contain. A throw-away consumer module requires
# k8s.io/kubernetes and replaces each of those staging modules with its published v0.X.Y instead;
# etcd's server module has the same problem (replaces ../api etc.) and the same cure, since a
# dependency's replace directives are ignored and its requirements are the published versions.
set -euo pipefail

KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
KNATIVE_SERVING_VERSION=${KNATIVE_SERVING_VERSION:-v0.50.0}  # knative-v1.23
KSERVE_VERSION=${KSERVE_VERSION:-v0.20.0}
KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
CACHE=${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-autoscaler/control-plane}

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--p=2} -trimpath" GOTOOLCHAIN=${GOTOOLCHAIN:-local}
log() { echo "control-plane build: $*" >&2; }

mkdir -p "$CACHE"

# build_into NAME VERSION BODY...: runs BODY in a fresh consumer module and moves the result to
# $CACHE/NAME-VERSION only when it succeeded, so a half-built component is never taken for done.
build_into() {
    local name=$1 version=$2 final="$CACHE/$1-$2"; shift 2
    [ -d "$final" ] && return 0
    # one build of a component at a time per machine: a second caller waits, then finds it built
    exec 9>"$CACHE/.lock-$name-$version"
    flock 9
    [ -d "$final" ] && { exec 9>&-; return 0; }
    command -v go >/dev/null || { log "cannot build $name $version: go is not installed (needs Go >= 1.26)"; exit 69; }
    local work; work=$(mktemp -d "$CACHE/.build-$name-XXXX")
    local start=$SECONDS
    log "building $name $version (first run on this machine; see README for time and disk)"
    ( cd "$work" && mkdir out && "$@" ) || { rm -rf "$work"; log "$name $version failed to build"; exit 1; }
    mv "$work/out" "$final" && rm -rf "$work"
    exec 9>&-
    log "$name $version built in $((SECONDS - start)) s"
}

kubernetes() {
    local minor=${KUBERNETES_VERSION#v1.} && minor=${minor%%.*}
    local staging=v0.${KUBERNETES_VERSION#v1.}
    go mod init consumer >/dev/null 2>&1
    go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
    local gomod; gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
        sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
    local module
    for module in $(sed -n 's#^\s*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod"); do
        go mod edit -replace "$module=$module@$staging"
    done
    local pkg ldflags="-s -w" key val
    for key in gitVersion gitMajor gitMinor gitTreeState buildDate; do
        case $key in
            gitVersion) val=$KUBERNETES_VERSION ;; gitMajor) val=1 ;; gitMinor) val=$minor ;;
            gitTreeState) val=clean ;; buildDate) val=$(date -u +%Y-%m-%dT%H:%M:%SZ) ;;
        esac
        ldflags+=" -X k8s.io/component-base/version.$key=$val -X k8s.io/client-go/pkg/version.$key=$val"
    done
    # -mod=mod fills go.sum from the proxy (checked against sum.golang.org) as the build needs it;
    # the published v0.X.Y of a staging module the graph lists but nothing imports (sample-cli-plugin)
    # is never fetched.
    for pkg in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
        go build -mod=mod -ldflags "$ldflags" -o "out/$pkg" "k8s.io/kubernetes/cmd/$pkg"
    done
}

etcd() {
    go mod init consumer >/dev/null 2>&1
    go mod edit -require "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -mod=mod -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
}

# kwok acts only by Stages: its own "fast" ones (node initialised Ready; pods Ready once bound,
# deletions finished), taken from the module source so they match the binary.
kwok() {
    GOBIN="$PWD/out" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    local source; source=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
    local stage
    for stage in "$source"/kustomize/stage/node/fast/node-*.yaml "$source"/kustomize/stage/pod/fast/pod-*.yaml; do
        printf -- '---\n' && cat "$stage"
    done > out/kwok-stages.yaml
}

knative() {
    go mod init consumer >/dev/null 2>&1
    go mod edit -require "knative.dev/serving@$KNATIVE_SERVING_VERSION"
    go build -mod=mod -ldflags "-s -w" -o out/knative-serving-controller knative.dev/serving/cmd/controller
    go build -mod=mod -ldflags "-s -w" -o out/knative-serving-webhook knative.dev/serving/cmd/webhook
    # what the controller needs in the cluster, from the very module versions it was built from:
    # its CRDs and those of knative.dev/networking and knative.dev/caching, and its ConfigMaps
    local serving networking caching file
    serving=$(go list -mod=mod -m -f '{{.Dir}}' knative.dev/serving)
    networking=$(go list -mod=mod -m -f '{{.Dir}}' knative.dev/networking)
    caching=$(go list -mod=mod -m -f '{{.Dir}}' knative.dev/caching)
    for file in "$serving"/config/core/300-resources/*.yaml "$networking"/config/{certificate,domain-claim,ingress,serverlessservice}.yaml \
        "$caching"/config/image.yaml; do
        printf -- '---\n' && cat "$file"
    done > out/knative-serving-crds.yaml
    for file in "$serving"/config/core/100-namespace.yaml "$serving"/config/core/configmaps/*.yaml "$networking"/config/config-network.yaml; do
        printf -- '---\n' && cat "$file"
    done > out/knative-serving-config.yaml
    knative_webhooks out
}

# knative_webhooks DIR: the webhook's Secret and its three webhook configurations (the webhook
# fills in their certificates and caBundles), from the module; also into a cache built before
# they were written there (one file, moved in whole).
knative_webhooks() {
    [ -f "$1/knative-serving-webhooks.yaml" ] && return 0
    local serving file
    serving=$(go mod download -json "knative.dev/serving@$KNATIVE_SERVING_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
    [ -n "$serving" ] || { log "the module proxy did not serve knative.dev/serving@$KNATIVE_SERVING_VERSION"; return 1; }
    for file in "$serving"/config/core/webhooks/*.yaml; do
        printf -- '---\n' && cat "$file"
    done > "$1/.knative-serving-webhooks.yaml"
    mv "$1/.knative-serving-webhooks.yaml" "$1/knative-serving-webhooks.yaml"
}

# KServe's go.mod pins versions by replace directives (k8s.io/* v0.34, controller-runtime), which
# a dependency's go.mod cannot impose: the consumer module repeats them.
kserve() {
    go mod init consumer >/dev/null 2>&1
    go mod edit -require "github.com/kserve/kserve@$KSERVE_VERSION"
    local gomod replacement
    gomod=$(go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
    for replacement in $(go mod edit -json "$gomod" | python3 -c "
import json, sys
for r in json.load(sys.stdin).get('Replace') or []:
    if r['New'].get('Version'):
        print(r['Old']['Path'] + '=' + r['New']['Path'] + '@' + r['New']['Version'])
"); do
        go mod edit -replace "$replacement"
    done
    go build -mod=mod -ldflags "-s -w" -o out/kserve-manager github.com/kserve/kserve/cmd/manager
    # its CRDs from the same version (the top-level ones; the subfolders are kustomize patches)
    local source file
    source=$(go list -mod=mod -m -f '{{.Dir}}' github.com/kserve/kserve)
    for file in "$source"/config/crd/full/serving.kserve.io_*.yaml; do
        printf -- '---\n' && cat "$file"
    done > out/kserve-crds.yaml
}

# KEDA's ScaledObject CRD, from its module's source (KEDA's operator is not built: KServe's
# `autoscalerClass: keda` path only needs the API to write its ScaledObject to).
keda() {
    local source
    source=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
    [ -n "$source" ] || { log "the module proxy did not serve github.com/kedacore/keda/v2@$KEDA_VERSION"; return 1; }
    cp "$source/config/crd/bases/keda.sh_scaledobjects.yaml" out/
}

if [ $# -gt 0 ]; then
    for extra in "$@"; do
        case $extra in
            knative) build_into knative-serving "$KNATIVE_SERVING_VERSION" knative &&
                knative_webhooks "$CACHE/knative-serving-$KNATIVE_SERVING_VERSION" &&
                echo "$CACHE/knative-serving-$KNATIVE_SERVING_VERSION" ;;
            kserve) build_into kserve "$KSERVE_VERSION" kserve && echo "$CACHE/kserve-$KSERVE_VERSION" ;;
            keda) build_into keda "$KEDA_VERSION" keda && echo "$CACHE/keda-$KEDA_VERSION" ;;
            *) log "unknown component $extra (knative, kserve, keda)"; exit 2 ;;
        esac
    done
    exit 0
fi

build_into etcd "$ETCD_VERSION" etcd
build_into kwok "$KWOK_VERSION" kwok
build_into kubernetes "$KUBERNETES_VERSION" kubernetes

# One directory of links, named by the three versions, so callers need a single path.
bin="$CACHE/bin-kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
if [ ! -d "$bin" ]; then
    tmp=$(mktemp -d "$CACHE/.bin-XXXX")
    ln -s "$CACHE"/kubernetes-"$KUBERNETES_VERSION"/* "$CACHE/etcd-$ETCD_VERSION/etcd" \
        "$CACHE/kwok-$KWOK_VERSION"/* "$tmp/"
    mv -T "$tmp" "$bin" 2>/dev/null || rm -rf "$tmp"  # made meanwhile by another caller
fi
echo "$bin"
