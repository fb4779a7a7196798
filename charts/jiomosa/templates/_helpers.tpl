{{/*
Names and labels, as `helm create` makes them, plus a component label
(operator, streamer, redis, browser, test).
*/}}

{{- define "jiomosa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 characters minus room for the longest suffix the chart
appends ("-streamer-sessions", 18): every resource name stays a DNS label.
*/}}
{{- define "jiomosa.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "jiomosa.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "jiomosa.labels" -}}
helm.sh/chart: {{ include "jiomosa.chart" . }}
{{ include "jiomosa.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jiomosa
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "jiomosa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jiomosa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of a component's resources: (dict "ctx" $ "component" "streamer") */}}
{{- define "jiomosa.componentLabels" -}}
{{ include "jiomosa.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of a component's pods: (dict "ctx" $ "component" "streamer") */}}
{{- define "jiomosa.componentSelectorLabels" -}}
{{ include "jiomosa.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The jiomosa image (streamer and operator). */}}
{{- define "jiomosa.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The browser pods' default image (browser.image, as the jiomosa image). */}}
{{- define "jiomosa.browserImage" -}}
{{- $i := .Values.browser.image }}
{{- if $i.digest }}
{{- printf "%s@%s" $i.repository $i.digest }}
{{- else }}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) }}
{{- end }}
{{- end }}

{{/* The browser pods' port the streamers and the operator reach: the agent's or WebDriver's. */}}
{{- define "jiomosa.browserPort" -}}
{{- if eq .Values.browser.kind "agent" }}{{ .Values.browser.agentPort }}{{ else }}{{ .Values.browser.webdriverPort }}{{ end }}
{{- end }}

{{/* The Secret holding the operator's token key, and its key. */}}
{{- define "jiomosa.operator.tokenKeySecret" -}}
{{- default (printf "%s-operator-key" (include "jiomosa.fullname" .)) .Values.operator.tokenKey.existingSecret }}
{{- end }}

{{/* Namespace of the BrowserSessions the streamers create. */}}
{{- define "jiomosa.sessionsNamespace" -}}
{{- default .Release.Namespace .Values.sessions.namespace }}
{{- end }}

{{/*
Namespaces the operator serves when it is not cluster-wide, as a JSON list (fromJsonArray):
operator.watchNamespaces, else the sessions namespace.
*/}}
{{- define "jiomosa.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- .Values.operator.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list (include "jiomosa.sessionsNamespace" .) | toJson }}
{{- end }}
{{- end }}

{{/*
Namespaces where browser pods may run, as a JSON list: where NetworkPolicies for them are
rendered. Cluster-wide: the sessions namespace and any watchNamespaces listed.
*/}}
{{- define "jiomosa.browserNamespaces" -}}
{{- $out := fromJsonArray (include "jiomosa.watchNamespaces" .) }}
{{- if .Values.operator.clusterWide }}
{{- $out = concat (list (include "jiomosa.sessionsNamespace" .)) .Values.operator.watchNamespaces }}
{{- end }}
{{- $out | uniq | toJson }}
{{- end }}

{{/*
Name of the cluster-scoped ValidatingAdmissionPolicy and its binding: one per release and
namespace (a digest of the namespace keeps it a DNS label).
*/}}
{{- define "jiomosa.admissionPolicyName" -}}
{{- printf "%s-bs-%s" (include "jiomosa.fullname" .) (.Release.Namespace | sha256sum | trunc 8) }}
{{- end }}

{{- define "jiomosa.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "jiomosa.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jiomosa.streamer.serviceAccountName" -}}
{{- if .Values.streamer.serviceAccount.create }}
{{- default (printf "%s-streamer" (include "jiomosa.fullname" .)) .Values.streamer.serviceAccount.name }}
{{- else }}
{{- required "streamer.serviceAccount.name is required when streamer.serviceAccount.create is false" .Values.streamer.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jiomosa.redis.fullname" -}}
{{- printf "%s-redis" (include "jiomosa.fullname" .) }}
{{- end }}

{{- define "jiomosa.streamer.fullname" -}}
{{- printf "%s-streamer" (include "jiomosa.fullname" .) }}
{{- end }}

{{/* The env entry JIOMOSA_REDIS_URL: in-chart Redis, an external URL, or a Secret. */}}
{{- define "jiomosa.redisUrlEnv" -}}
- name: JIOMOSA_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s.%s.svc:6379/0" (include "jiomosa.redis.fullname" .) .Release.Namespace | quote }}
{{- else if .Values.externalRedis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- else if .Values.externalRedis.url }}
  value: {{ .Values.externalRedis.url | quote }}
{{- else }}
{{- fail "the streamers need Redis: set redis.enabled=true, externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
{{- end }}

{{/* Labels of the browser pods the operator creates (streamer/jiomosa/k8s/model.py). */}}
{{- define "jiomosa.browserPodLabels" -}}
app.kubernetes.io/name: jiomosa-browser
app.kubernetes.io/managed-by: jiomosa-operator
{{- end }}

{{/*
A peer that selects a component's pods in the release namespace, from any namespace:
(dict "ctx" $ "component" "streamer")
*/}}
{{- define "jiomosa.componentPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .ctx.Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "jiomosa.componentSelectorLabels" . | nindent 6 }}
{{- end }}

{{/* Pod-level securityContext of the chart's own pods (the "restricted" Pod Security level). */}}
{{- define "jiomosa.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level securityContext of the chart's own containers. */}}
{{- define "jiomosa.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Comma-joined list value, for JIOMOSA_* list settings. */}}
{{- define "jiomosa.csv" -}}
{{- join "," . }}
{{- end }}

{{/*
RBAC rules of the operator, derived from its code (operator/jiomosa_operator) and checked by
tests/chart/test_chart_rbac.py, which runs the operator as this ServiceAccount and removes each
rule in turn:
- Kopf lists and watches BrowserSessions, patches them (finalizer, progress annotations) and
  their status subresource (phases, endpoints; the handlers' own status patches too);
- the handlers create, get and delete the browser pods and patch a warm pool pod to claim it
  (owner reference, labels); Kopf's pod index and the pool list and watch them;
- Kopf posts Events (core/v1) for every transition;
- the handlers create a Secret (generated name) with the viewer token of each kubectl-made
  session and one with the CDP token of each agent pod, and delete them with the session; they
  never read one (no get: the CDP tokens are derived from the operator's key).
No leases: the operator runs standalone (one replica, no Kopf peering).
*/}}
{{- define "jiomosa.operator.rules" -}}
- apiGroups: [jiomosa.io]
  resources: [browsersessions]
  verbs: [list, watch, patch]
- apiGroups: [jiomosa.io]
  resources: [browsersessions/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, delete]
{{- end }}

{{/*
Cluster-wide only: Kopf lists and watches the CRDs (it re-scans the served resources). It does
not need namespaces: without namespace patterns it watches cluster-wide lists (the RBAC test
shows the lifecycle passing without, and failing without the CRD rule).
*/}}
{{- define "jiomosa.operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/*
RBAC rules of a streamer with backend kubernetes (streamer/jiomosa/providers/kubernetes.py): create a
BrowserSession per session, read it while it starts, patch its activity annotation, delete it
at close; list and watch the kubectl-made ones (the index of viewer-token hashes,
streamer/jiomosa/k8s/viewers.py); get (by name, never list) the Secret with the CDP token of a
session's agent pod (status.endpoints.cdpTokenSecret). RBAC cannot narrow that get to those
names: keep sessions.namespace apart from the release namespace (docs/operator.md, "Tokens").
*/}}
{{- define "jiomosa.streamer.rules" -}}
- apiGroups: [jiomosa.io]
  resources: [browsersessions]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}

{{/*
The operator's environment as a YAML map (name: value): the chart's settings, then
operator.env over them (so that a value there wins instead of duplicating a variable).
*/}}
{{- define "jiomosa.operator.env" -}}
{{- $b := .Values.browser }}
{{- $env := dict
  "JIOMOSA_LOG_FORMAT" .Values.logging.format
  "JIOMOSA_LOG_LEVEL" .Values.logging.level
  "JIOMOSA_OPERATOR_NAMESPACES" (ternary "" (include "jiomosa.csv" (fromJsonArray (include "jiomosa.watchNamespaces" .))) .Values.operator.clusterWide)
  "JIOMOSA_OPERATOR_BROWSER_KIND" $b.kind
  "JIOMOSA_OPERATOR_IMAGE" (include "jiomosa.browserImage" .)
  "JIOMOSA_OPERATOR_IMAGE_PULL_POLICY" $b.pullPolicy
  "JIOMOSA_OPERATOR_AGENT_PORT" (printf "%d" (int $b.agentPort))
  "JIOMOSA_OPERATOR_WEBDRIVER_PORT" (printf "%d" (int $b.webdriverPort))
  "JIOMOSA_OPERATOR_VNC_PORT" (printf "%d" (int $b.vncPort))
  "JIOMOSA_OPERATOR_CPU_REQUEST" ($b.resources.requests.cpu | default "")
  "JIOMOSA_OPERATOR_MEMORY_REQUEST" ($b.resources.requests.memory | default "")
  "JIOMOSA_OPERATOR_CPU_LIMIT" ($b.resources.limits.cpu | default "")
  "JIOMOSA_OPERATOR_MEMORY_LIMIT" ($b.resources.limits.memory | default "")
  "JIOMOSA_OPERATOR_SHM_SIZE" $b.shmSize
  "JIOMOSA_OPERATOR_TMP_SIZE" $b.tmpSize
  "JIOMOSA_OPERATOR_ALLOWED_IMAGES" (include "jiomosa.csv" $b.allowedImages)
  "JIOMOSA_OPERATOR_MAX_CPU" (toString $b.maxResources.cpu)
  "JIOMOSA_OPERATOR_MAX_MEMORY" (toString $b.maxResources.memory)
  "JIOMOSA_OPERATOR_ALLOWED_NODE_SELECTORS" (include "jiomosa.csv" $b.allowedNodeSelectors)
  "JIOMOSA_OPERATOR_ALLOWED_TOLERATIONS" (include "jiomosa.csv" $b.allowedTolerations)
  "JIOMOSA_OPERATOR_RUN_AS_USER" (ternary "" (printf "%d" (int $b.runAsUser)) (kindIs "invalid" $b.runAsUser))
  "JIOMOSA_OPERATOR_RUN_AS_GROUP" (ternary "" (printf "%d" (int $b.runAsGroup)) (kindIs "invalid" $b.runAsGroup))
  "JIOMOSA_OPERATOR_SERVICE_ACCOUNT" $b.serviceAccountName
  "JIOMOSA_OPERATOR_START_TIMEOUT" (printf "%d" (int $b.startTimeoutSeconds))
  "JIOMOSA_OPERATOR_WARM_POOL" (printf "%d" (int $b.warmPool.size))
  "JIOMOSA_OPERATOR_POOL_NAMESPACES" (include "jiomosa.sessionsNamespace" .)
  "JIOMOSA_OPERATOR_POOL_START_TIMEOUT" (printf "%d" (int $b.warmPool.startTimeoutSeconds))
  "JIOMOSA_OPERATOR_ALLOW_HOSTS" (include "jiomosa.csv" .Values.urlPolicy.allowHosts)
  "JIOMOSA_OPERATOR_LIVENESS_PORT" (printf "%d" (int .Values.operator.livenessPort))
}}
{{- toYaml (mergeOverwrite $env .Values.operator.env) }}
{{- end }}

{{/*
The streamer's environment as a YAML map (name: value), streamer.env over the chart's
settings. JIOMOSA_REDIS_URL and JIOMOSA_STREAMER_ID are added by the Deployment.
*/}}
{{/* Where the streamer sees its API keys' Secret (a directory mount: no subPath, so that
     the kubelet's updates of the Secret reach the file). */}}
{{- define "jiomosa.apiKeysDir" -}}
/etc/jiomosa/api-keys
{{- end }}

{{- define "jiomosa.streamer.env" -}}
{{- $s := .Values.streamer }}
{{- if and (eq $s.backend "grid") (not $s.gridUrl) }}
{{- fail "streamer.gridUrl is required with streamer.backend=grid" }}
{{- end }}
{{- $env := dict
  "JIOMOSA_LOG_FORMAT" .Values.logging.format
  "JIOMOSA_LOG_LEVEL" .Values.logging.level
  "JIOMOSA_STORE" "redis"
  "JIOMOSA_BACKEND" $s.backend
  "JIOMOSA_NAMESPACE" (include "jiomosa.sessionsNamespace" .)
  "JIOMOSA_MAX_SESSIONS" (printf "%d" (int $s.maxSessions))
  "JIOMOSA_IDLE_TIMEOUT" (printf "%d" (int $s.idleTimeoutSeconds))
  "JIOMOSA_MAX_DURATION" (printf "%d" (int $s.maxDurationSeconds))
  "JIOMOSA_BROWSER_START_TIMEOUT" (printf "%d" (int $s.browserStartTimeoutSeconds))
  "JIOMOSA_ALLOW_HOSTS" (include "jiomosa.csv" .Values.urlPolicy.allowHosts)
  "JIOMOSA_CORS_ORIGINS" (include "jiomosa.csv" $s.corsOrigins)
  "JIOMOSA_PUBLIC_URL" $s.publicUrl
  "JIOMOSA_TRUSTED_PROXIES" (include "jiomosa.csv" $s.trustedProxies)
}}
{{- if eq $s.backend "grid" }}
{{- $_ := set $env "JIOMOSA_GRID_URL" $s.gridUrl }}
{{- end }}
{{- /* The abuse limits: rates may be fractions, the rest whole numbers. */}}
{{- $l := $s.limits }}
{{- range $name, $var := dict "createsPerMinute" "JIOMOSA_CREATES_PER_MINUTE" "inputPerSecond" "JIOMOSA_INPUT_PER_SECOND" "connectsPerMinute" "JIOMOSA_CONNECTS_PER_MINUTE" "messagesPerSecond" "JIOMOSA_MESSAGES_PER_SECOND" }}
{{- $_ := set $env $var (toString (index $l $name)) }}
{{- end }}
{{- range $name, $var := dict "createBurst" "JIOMOSA_CREATE_BURST" "sessionsPerAddress" "JIOMOSA_SESSIONS_PER_ADDRESS" "inputBurst" "JIOMOSA_INPUT_BURST" "frameQualities" "JIOMOSA_FRAME_QUALITIES" "connectionsPerAddress" "JIOMOSA_CONNECTIONS_PER_ADDRESS" "connectBurst" "JIOMOSA_CONNECT_BURST" "messageBurst" "JIOMOSA_MESSAGE_BURST" "floodStrikes" "JIOMOSA_FLOOD_STRIKES" "rateLimitKeys" "JIOMOSA_RATE_LIMIT_KEYS" }}
{{- $_ := set $env $var (printf "%d" (int (index $l $name))) }}
{{- end }}
{{- if $s.apiKeys.existingSecret }}
{{- $_ := set $env "JIOMOSA_API_KEYS_FILE" (printf "%s/keys.json" (include "jiomosa.apiKeysDir" .)) }}
{{- end }}
{{- toYaml (mergeOverwrite $env $s.env) }}
{{- end }}

{{/* Annotations of the Ingress(es): ingress-nginx timeouts, body size, affinity. */}}
{{- define "jiomosa.ingress.annotations" -}}
{{- $i := .Values.ingress }}
nginx.ingress.kubernetes.io/proxy-read-timeout: {{ $i.timeoutSeconds | quote }}
nginx.ingress.kubernetes.io/proxy-send-timeout: {{ $i.timeoutSeconds | quote }}
nginx.ingress.kubernetes.io/proxy-body-size: {{ $i.bodySize | quote }}
# Frames and long-poll answers go out as they come.
nginx.ingress.kubernetes.io/proxy-buffering: "off"
{{- if eq $i.affinity "cookie" }}
nginx.ingress.kubernetes.io/affinity: cookie
nginx.ingress.kubernetes.io/affinity-mode: persistent
nginx.ingress.kubernetes.io/session-cookie-name: {{ $i.cookie.name | quote }}
nginx.ingress.kubernetes.io/session-cookie-max-age: {{ $i.cookie.maxAgeSeconds | quote }}
nginx.ingress.kubernetes.io/session-cookie-path: /
{{- end }}
{{- with $i.annotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
