# Sourced by tools/controlplane/build.sh and tools/cluster/build.sh.
# k8s_version_ldflags vX.Y.Z: the -X flags upstream's hack/lib/version.sh stamps in, so that
# /version, `kubectl version` and `kubelet --version` report the real release instead of
# v0.0.0-master.
k8s_version_ldflags() {
  local version=$1 minor pkg flags=""
  minor="${version#v1.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
  done
  echo "$flags"
}
