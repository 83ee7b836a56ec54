{{- define "iggy-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "iggy-operator.selectorLabels" -}}
app.kubernetes.io/name: iggy-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "iggy-operator.labels" -}}
{{ include "iggy-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "iggy-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "iggy-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Rules for namespaced objects the operator manages for each IggyCluster. */}}
{{- define "iggy-operator.namespacedRules" -}}
- apiGroups: [iggy.rs]
  resources: [iggyclusters]
  verbs: [get, list, watch, patch, update]
- apiGroups: [iggy.rs]
  resources: [iggyclusters/status]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [get, list, watch, create, patch, update, delete]
# Pods: read for status; patch to ask a primary to step down and delete to restart pods one
# at a time (rolling restarts: the StatefulSet is OnDelete); pods/status only because the
# sidecar Role the operator creates grants it, and Kubernetes lets nobody grant what they do
# not hold.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [get, patch]
# Secrets: read to check the referenced root credentials exist (values are never copied) and
# the client port's certificate (tls.crt, for its expiry and names; never tls.key);
# create to generate <cluster>-root once when spec.auth is not set, and <cluster>-replication
# (the secret the brokers prove to each other) once per cluster; neither is ever updated.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
# The brokers' NetworkPolicy (the replication port admits only the cluster's brokers).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/*
OTEL_RESOURCE_ATTRIBUTES for the operator: where it runs, then the user's attributes.
The pod name comes from the POD_NAME variable set just above it.
*/}}
{{- define "iggy-operator.resourceAttributes" -}}
{{- $attributes := list (printf "k8s.namespace.name=%s" .Release.Namespace) "k8s.pod.name=$(POD_NAME)" -}}
{{- range $key, $value := .Values.telemetry.resourceAttributes -}}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $attributes -}}
{{- end -}}
