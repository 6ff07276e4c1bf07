{{/*
Names and labels shared by every template. Names are fixed strings derived from the
release (no generated names or random suffixes), so the rendered manifests stay stable for
GitOps tools and kustomize overlays.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "llm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: fullnameOverride, else the release name (+ chart name). */}}
{{- define "llm-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The version label value: appVersion, which names the operator image. */}}
{{- define "llm-operator.version" -}}
{{- .Chart.AppVersion | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels selecting the operator pods; never change them after a release (selectors are
immutable). Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "llm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-operator.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The standard app.kubernetes.io/* labels of every object plus commonLabels.
Call with (dict "ctx" $ "component" "<component>").
*/}}
{{- define "llm-operator.labels" -}}
{{ include "llm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ include "llm-operator.version" .ctx | quote }}
app.kubernetes.io/part-of: llm-operator
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "llm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference: repository@digest or repository:tag. */}}
{{- define "llm-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap holding the GPU catalog, or "" when the built-in one is used. */}}
{{- define "llm-operator.calibrationConfigMap" -}}
{{- if .Values.calibration.content }}
{{- printf "%s-calibration" (include "llm-operator.fullname" .) }}
{{- else if .Values.calibration.existingConfigMap }}
{{- .Values.calibration.existingConfigMap }}
{{- end }}
{{- end }}

{{- define "llm-operator.gpuCatalogConfigMap" -}}
{{- if .Values.gpuCatalog.content }}
{{- printf "%s-gpu-catalog" (include "llm-operator.fullname" .) }}
{{- else if .Values.gpuCatalog.existingConfigMap }}
{{- .Values.gpuCatalog.existingConfigMap }}
{{- end }}
{{- end }}

{{/*
The kopf.dev peering resource: cluster-wide peering for an operator watching all
namespaces, namespaced peering (in watchNamespace) otherwise. Kopf picks the same way.
*/}}
{{- define "llm-operator.peeringPlural" -}}
{{- if .Values.watchNamespace }}kopfpeerings{{ else }}clusterkopfpeerings{{ end }}
{{- end }}

{{/*
Refuse value combinations that cannot work, with a message naming the values to change.
*/}}
{{- define "llm-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) }}
{{- fail "replicas > 1 needs peering.enabled=true: without Kopf peering every pod would reconcile the same objects" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.service) }}
{{- fail "serviceMonitor.enabled=true needs metrics.service=true (the ServiceMonitor selects that Service)" }}
{{- end }}
{{- end }}

{{/*
engineImages as the operator reads them: "key=image,key=image", keys sorted.
*/}}
{{- define "llm-operator.engineImages" -}}
{{- $items := list }}
{{- range $key := keys . | sortAlpha }}
{{- $items = append $items (printf "%s=%s" $key (index $ $key)) }}
{{- end }}
{{- join "," $items }}
{{- end }}
