{{/* Names and labels shared by every template. */}}
{{- define "fogline.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fogline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fogline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fogline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fogline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "fogline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fogline
{{- end -}}

{{- define "fogline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fogline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fogline.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "fogline.workloadImage" -}}
{{- $root := index . 0 -}}{{- $kind := index . 1 -}}{{- $set := index . 2 -}}
{{- default (printf "ghcr.io/fogline/%s:%s" $kind $root.Chart.AppVersion) $set -}}
{{- end -}}

{{/*
What the operator does inside the namespaces it serves. Each rule is exercised by the
least-privilege test (tests/cluster/test_rbac_least_privilege.py), which fails on a rule
the operator never uses.
*/}}
{{- define "fogline.namespacedRules" -}}
# Watch the two kinds; the operator writes only their status (no finalizers, no
# annotations: its handlers are all event handlers, which keep no state on the object).
- apiGroups: [fogline.io]
  resources: [modeltrainings, edgedeployments]
  verbs: [list, watch]
- apiGroups: [fogline.io]
  resources: [modeltrainings/status, edgedeployments/status]
  verbs: [patch]
# Training Jobs: server-side apply (a patch, which also needs create when the object is
# new) creates and updates them; superseded runs are deleted.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete]
# The headless Service of a distributed run, applied server-side.
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
# Trainer and server pods are watched and restarted; get and patch are what the trainer
# Role grants, and RBAC lets the operator grant only what it holds.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, get, patch, delete]
# The per-namespace trainer identity: ServiceAccount, Role and RoleBinding, applied
# server-side; watched (only ours, by label) so that a deleted one is applied again.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch]
# One inference DaemonSet per edge site.
- apiGroups: [apps]
  resources: [daemonsets]
  verbs: [list, watch, create, patch, delete]
# The optional ingress policy of each EdgeDeployment's servers (settings.edgeIngressCIDRs),
# applied server-side and watched so that an edit is reverted.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch]
# Events on the CRs; the DaemonSet controller's Warnings about our DaemonSets are watched
# (a pod it cannot create: Pod Security admission, a quota), since DaemonSet status has no
# condition that says so.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list, watch]
{{- end -}}

{{/* Cluster-scoped reads, needed whichever namespaces are watched. */}}
{{- define "fogline.clusterRules" -}}
# kopf follows CRDs to learn when the resources it serves appear or change.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# Edge nodes group into sites by label; their readiness decides a wave.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# kopf follows namespaces to serve the watched ones as they come and go.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}

{{- define "fogline.peeringRules" -}}
# kopf records this replica in the peering object and reads the others.
- apiGroups: [kopf.dev]
  resources: [{{ ternary "clusterkopfpeerings" "kopfpeerings" (empty .Values.watchNamespaces) }}]
  verbs: [list, watch, patch]
{{- end -}}
