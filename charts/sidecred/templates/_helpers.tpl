{{/* Object names: RELEASE-sidecred, or RELEASE when it already says sidecred (63 characters at most). */}}
{{- define "sidecred.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What every object carries. app.kubernetes.io/name stays "sidecred": the PodMonitors select on it. */}}
{{- define "sidecred.labels" -}}
app.kubernetes.io/name: sidecred
app.kubernetes.io/part-of: sidecred
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The pods of this release and no other: two releases in one namespace never share a Service or a PDB. */}}
{{- define "sidecred.selectorLabels" -}}
app.kubernetes.io/name: sidecred
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sidecred.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sidecred.leaseName" -}}
{{- .Values.writeBack.leaseName | default (include "sidecred.fullname" .) -}}
{{- end -}}

{{/* The agent's socket, shared with the forwarder through the socket volume. */}}
{{- define "sidecred.socket" -}}
/run/sidecred/agent/agent.sock
{{- end -}}

{{/* Combinations that would lose the login or never schedule, refused before anything is applied. */}}
{{- define "sidecred.validate" -}}
{{- if not (or .Values.writeBack.enabled .Values.persistence.enabled) -}}
{{- fail "values: writeBack.enabled or persistence.enabled must be true: otherwise a new pod starts from the Secret's pair, which the first refresh has already spent" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.writeBack.enabled) -}}
{{- fail "values: replicaCount > 1 needs writeBack.enabled: without the Lease, two agents race for the rotating refresh token and the login is lost" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) .Values.persistence.enabled -}}
{{- fail "values: persistence.enabled needs replicaCount 1: the state volume is ReadWriteOnce (one pod); with replicas > 1 use writeBack alone" -}}
{{- end -}}
{{- if lt (int .Values.replicaCount) 1 -}}
{{- fail "values: replicaCount must be at least 1" -}}
{{- end -}}
{{- if not .Values.credentials.existingSecret -}}
{{- fail "values: credentials.existingSecret must name the Secret made from a login (docs/deploy.md)" -}}
{{- end -}}
{{- end -}}
