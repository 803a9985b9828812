{{/* Names and labels. */}}
{{- define "broker.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "broker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "broker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (web, scheduler, migrate): call with (list . "web"). */}}
{{- define "broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broker.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "broker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "broker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Settings: only BROKER_* names, the required ones present, empty values left out. */}}
{{- define "broker.settingsData" -}}
{{- $s := .Values.settings -}}
{{- range $name := list "BROKER_BASE_URL" "BROKER_OIDC_ISSUER" "BROKER_OIDC_CLIENT_ID" -}}
{{- if not (index $s $name) -}}
{{- fail (printf "settings.%s is required (README.md, Configuration)" $name) -}}
{{- end -}}
{{- end -}}
{{- range $name, $value := $s -}}
{{- if not (hasPrefix "BROKER_" $name) -}}
{{- fail (printf "settings.%s: only BROKER_* settings belong here" $name) -}}
{{- end -}}
{{- if ne (toString $value) "" }}
{{ $name }}: {{ toString $value | quote }}
{{- end -}}
{{- end }}
BROKER_POLICY_DIR: "/etc/broker/policies"
{{- end -}}

{{/* The Secret's data, from .Values.secrets (only when no existingSecret is named). */}}
{{- define "broker.secretData" -}}
{{- $s := .Values.secrets -}}
{{- range $name := list "BROKER_SECRET_KEY" "BROKER_DATABASE_URL" -}}
{{- if not (index $s $name) -}}
{{- fail (printf "secrets.%s is required, or name a Secret of yours in existingSecret" $name) -}}
{{- end -}}
{{- end -}}
{{- if lt (len $s.BROKER_SECRET_KEY) 32 -}}
{{- fail "secrets.BROKER_SECRET_KEY must be at least 32 random characters" -}}
{{- end -}}
{{- range $name, $value := $s -}}
{{- if not (hasPrefix "BROKER_" $name) -}}
{{- fail (printf "secrets.%s: only BROKER_* settings belong here" $name) -}}
{{- end -}}
{{- if ne (toString $value) "" }}
{{ $name }}: {{ toString $value | b64enc | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "broker.policiesData" -}}
{{- if not .Values.policies.files -}}
{{- fail "policies.files is empty: give the policy files (--set-file) or policies.existingConfigMap" -}}
{{- end -}}
{{- range $file, $text := .Values.policies.files }}
{{ $file | quote }}: {{ toJson $text }}
{{- end -}}
{{- end -}}

{{/*
The pod parts every broker container shares: settings from the ConfigMap and Secret, policies
read-only, and the only writable places, /tmp and the instance folder, as emptyDirs.
Call with (list . "") for the release's objects, (list . "-migrate") for the hook's copies.
*/}}
{{- define "broker.envFrom" -}}
{{- $ := index . 0 -}}
{{- $suffix := index . 1 -}}
- configMapRef:
    name: {{ include "broker.fullname" $ }}-settings{{ $suffix }}
- secretRef:
    name: {{ $.Values.existingSecret | default (printf "%s-secrets%s" (include "broker.fullname" $) $suffix) }}
{{- end -}}

{{- define "broker.volumeMounts" -}}
- name: policies
  mountPath: /etc/broker/policies
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: instance
  mountPath: /var/lib/broker
{{- end -}}

{{- define "broker.volumes" -}}
{{- $ := index . 0 -}}
{{- $suffix := index . 1 -}}
- name: policies
  configMap:
    name: {{ $.Values.policies.existingConfigMap | default (printf "%s-policies%s" (include "broker.fullname" $) $suffix) }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ $.Values.tmpSizeLimit }}
- name: instance
  emptyDir:
    sizeLimit: {{ $.Values.instanceSizeLimit }}
{{- end -}}

{{- define "broker.podSpecCommon" -}}
serviceAccountName: {{ include "broker.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Roll the pods when settings, secrets or policies change. */}}
{{- define "broker.checksums" -}}
checksum/settings: {{ include "broker.settingsData" . | sha256sum }}
{{- if not .Values.existingSecret }}
checksum/secrets: {{ include "broker.secretData" . | sha256sum }}
{{- end }}
{{- if not .Values.policies.existingConfigMap }}
checksum/policies: {{ include "broker.policiesData" . | sha256sum }}
{{- end }}
{{- end -}}
