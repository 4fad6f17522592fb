{{/* Labels every object of the release carries. */}}
{{- define "coord.labels" -}}
app.kubernetes.io/name: milvus-coord-ha
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The pods of one component (rootcoord, querycoord, datacoord, etcd): the selector. */}}
{{- define "coord.selector" -}}
app.kubernetes.io/name: milvus-coord-ha
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The coordinators, as the values name them: section, role, prefix of their variables, default ports. */}}
{{- define "coord.roles" -}}
- {section: rootCoordinator, role: rootcoord, prefix: ROOT_COORD, port: 53100, httpPort: 9101}
- {section: queryCoordinator, role: querycoord, prefix: QUERY_COORD, port: 19531, httpPort: 9102}
- {section: dataCoordinator, role: datacoord, prefix: DATA_COORD, port: 13333, httpPort: 9103}
{{- end }}

{{/* ETCD_ENDPOINTS: the external endpoints, else the bundled etcd's client Service. */}}
{{- define "coord.etcdEndpoints" -}}
{{- if .Values.externalEtcd.enabled -}}
{{- if not .Values.externalEtcd.endpoints -}}
{{- fail "externalEtcd.enabled is true but externalEtcd.endpoints is empty" -}}
{{- end -}}
{{- join "," .Values.externalEtcd.endpoints -}}
{{- else if .Values.etcd.enabled -}}
{{- printf "%s-etcd:%d" .Release.Name (int .Values.etcd.service.port) -}}
{{- else -}}
{{- fail "no etcd: set etcd.enabled (the chart runs one) or externalEtcd.enabled with externalEtcd.endpoints" -}}
{{- end -}}
{{- end }}

{{/* log.* -> LOG_* variables, only those set. */}}
{{- define "coord.logEnv" -}}
{{- $log := .Values.log | default dict -}}
{{- $file := $log.file | default dict -}}
{{- range $key, $var := dict "level" "LOG_LEVEL" "format" "LOG_FORMAT" }}
{{- if hasKey $log $key }}
- name: {{ $var }}
  value: {{ index $log $key | toString | quote }}
{{- end }}
{{- end }}
{{- range $key, $var := dict "rootPath" "LOG_FILE_ROOT_PATH" "maxSize" "LOG_FILE_MAX_SIZE" "maxBackups" "LOG_FILE_MAX_BACKUPS" }}
{{- if hasKey $file $key }}
- name: {{ $var }}
  value: {{ index $file $key | toString | quote }}
{{- end }}
{{- end }}
{{- end }}
