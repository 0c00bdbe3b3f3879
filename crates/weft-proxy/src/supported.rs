//! The subset of Envoy's configuration model that weft-proxy implements, field by field.
//!
//! A config that sets any other field is refused with that field's path (see
//! `weft_xds::reflect`), so an Envoy user never gets a silently different behaviour. Adding
//! support for a field means implementing it *and* listing it here.

/// Whether `field` of message `msg` (full protobuf name) is implemented.
pub fn allowed(msg: &str, field: &str) -> bool {
    let fields: &[&str] = match msg {
        "envoy.config.bootstrap.v3.Bootstrap" => &[
            "node",
            "static_resources",
            "dynamic_resources",
            "admin",
            "stats_flush_interval",
        ],
        "envoy.config.bootstrap.v3.Bootstrap.DynamicResources" => {
            &["lds_config", "cds_config", "ads_config"]
        }
        "envoy.config.core.v3.ConfigSource" => {
            &["ads", "resource_api_version", "initial_fetch_timeout"]
        }
        "envoy.config.core.v3.AggregatedConfigSource" => &[],
        "envoy.config.core.v3.ApiConfigSource" => &[
            "api_type",
            "transport_api_version",
            "grpc_services",
            "set_node_on_first_message_only",
        ],
        "envoy.config.core.v3.GrpcService" => &["envoy_grpc", "google_grpc", "timeout"],
        "envoy.config.core.v3.GrpcService.EnvoyGrpc" => &["cluster_name", "authority"],
        "envoy.config.core.v3.GrpcService.GoogleGrpc" => &["target_uri", "stat_prefix"],
        "envoy.extensions.filters.network.http_connection_manager.v3.Rds" => {
            &["config_source", "route_config_name"]
        }
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig" => &["eds_config", "service_name"],
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources" => &["listeners", "clusters"],
        "envoy.config.bootstrap.v3.Admin" => {
            &["address", "access_log_path", "access_log", "profile_path"]
        }
        "envoy.config.core.v3.Node" => {
            &["id", "cluster", "metadata", "locality", "user_agent_name"]
        }
        "envoy.config.core.v3.Locality" => &["region", "zone", "sub_zone"],
        "envoy.config.core.v3.Address" => &["socket_address"],
        "envoy.config.core.v3.SocketAddress" => {
            &["protocol", "address", "port_value", "ipv4_compat"]
        }
        // Listeners.
        "envoy.config.listener.v3.Listener" => &[
            "name",
            "address",
            "stat_prefix",
            "filter_chains",
            "default_filter_chain",
            "listener_filters",
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
            "traffic_direction",
            "metadata",
        ],
        "envoy.config.listener.v3.FilterChain" => &[
            "filter_chain_match",
            "filters",
            "transport_socket",
            "name",
            "metadata",
            "transport_socket_connect_timeout",
        ],
        "envoy.config.listener.v3.FilterChainMatch" => &[
            "destination_port",
            "server_names",
            "transport_protocol",
            "application_protocols",
        ],
        "envoy.config.listener.v3.Filter" | "envoy.config.listener.v3.ListenerFilter" => {
            &["name", "typed_config"]
        }
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
        | "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => &[],
        "envoy.config.core.v3.TransportSocket" => &["name", "typed_config"],
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" => {
            &["common_tls_context", "require_client_certificate"]
        }
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => {
            &["common_tls_context", "sni"]
        }
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext" => &[
            "tls_params",
            "tls_certificates",
            "validation_context",
            "alpn_protocols",
        ],
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters" => &[
            "tls_minimum_protocol_version",
            "tls_maximum_protocol_version",
        ],
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate" => {
            &["certificate_chain", "private_key"]
        }
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext" => &["trusted_ca"],
        "envoy.config.core.v3.DataSource" => &[
            "filename",
            "inline_bytes",
            "inline_string",
            "environment_variable",
        ],
        // HTTP connection manager.
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => &[
            "codec_type",
            "stat_prefix",
            "route_config",
            "rds",
            "http_filters",
            "access_log",
            "upgrade_configs",
            "generate_request_id",
            "max_request_headers_kb",
            "use_remote_address",
            "server_name",
            "stream_idle_timeout",
            "request_timeout",
            "request_headers_timeout",
            "local_reply_config",
        ],
        "envoy.extensions.filters.network.http_connection_manager.v3.LocalReplyConfig" => {
            &["mappers", "body_format"]
        }
        "envoy.extensions.filters.network.http_connection_manager.v3.ResponseMapper" => {
            &["filter", "status_code", "body", "body_format_override"]
        }
        "envoy.config.accesslog.v3.AccessLogFilter" => {
            &["status_code_filter", "response_flag_filter"]
        }
        "envoy.config.accesslog.v3.StatusCodeFilter" => &["comparison"],
        "envoy.config.accesslog.v3.ComparisonFilter" => &["op", "value"],
        "envoy.config.accesslog.v3.ResponseFlagFilter" => &["flags"],
        // No runtime layer: a runtime key always yields its default value, as in Envoy.
        "envoy.config.core.v3.RuntimeUInt32"
        | "envoy.config.core.v3.RuntimeDouble"
        | "envoy.config.core.v3.RuntimeFractionalPercent" => &["default_value", "runtime_key"],
        "envoy.type.v3.FractionalPercent" => &["numerator", "denominator"],
        // HTTP filters: fault injection and CORS.
        "envoy.extensions.filters.http.fault.v3.HTTPFault" => {
            &["delay", "abort", "headers", "max_active_faults"]
        }
        "envoy.extensions.filters.common.fault.v3.FaultDelay" => &["fixed_delay", "percentage"],
        "envoy.extensions.filters.http.fault.v3.FaultAbort" => {
            &["http_status", "grpc_status", "percentage", "response_body"]
        }
        "envoy.extensions.filters.http.cors.v3.Cors" => &[],
        "envoy.extensions.filters.http.cors.v3.CorsPolicy" | "envoy.config.route.v3.CorsPolicy" => {
            &[
                "allow_origin_string_match",
                "allow_methods",
                "allow_headers",
                "expose_headers",
                "max_age",
                "allow_credentials",
                "filter_enabled",
                "forward_not_matching_preflights",
            ]
        }
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig" => {
            &["upgrade_type", "enabled"]
        }
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter" => {
            &["name", "typed_config"]
        }
        "envoy.extensions.filters.http.router.v3.Router" => {
            &["dynamic_stats", "suppress_envoy_headers"]
        }
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => &[
            "stat_prefix",
            "cluster",
            "weighted_clusters",
            "idle_timeout",
            "access_log",
            "max_connect_attempts",
        ],
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster" => &["clusters"],
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight" => {
            &["name", "weight"]
        }
        // Access logs.
        "envoy.config.accesslog.v3.AccessLog" => &["name", "typed_config"],
        "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
            &["path", "format", "json_format", "log_format"]
        }
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
        | "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => &["log_format"],
        "envoy.config.core.v3.SubstitutionFormatString" => &[
            "text_format",
            "json_format",
            "text_format_source",
            "omit_empty_values",
            "content_type",
        ],
        // Routes.
        "envoy.config.route.v3.RouteConfiguration" => &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "validate_clusters",
        ],
        "envoy.config.route.v3.VirtualHost" => &[
            "name",
            "domains",
            "routes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "retry_policy",
            "typed_per_filter_config",
            "cors",
        ],
        "envoy.config.route.v3.Route" => &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "metadata",
            "decorator",
            "typed_per_filter_config",
        ],
        "envoy.config.route.v3.Decorator" => &["operation", "propagate"],
        "envoy.config.route.v3.RouteMatch" => &[
            "prefix",
            "path",
            "safe_regex",
            "connect_matcher",
            "path_separated_prefix",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
        ],
        "envoy.config.route.v3.RouteMatch.ConnectMatcher"
        | "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions" => &[],
        "envoy.config.route.v3.HeaderMatcher" => &[
            "name",
            "exact_match",
            "safe_regex_match",
            "range_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "string_match",
            "invert_match",
            "treat_missing_header_as_empty",
        ],
        "envoy.type.v3.Int64Range" => &["start", "end"],
        "envoy.config.route.v3.QueryParameterMatcher" => &["name", "string_match", "present_match"],
        "envoy.type.matcher.v3.StringMatcher" => &[
            "exact",
            "prefix",
            "suffix",
            "safe_regex",
            "contains",
            "ignore_case",
        ],
        "envoy.type.matcher.v3.RegexMatcher" => &["regex", "google_re2"],
        "envoy.type.matcher.v3.RegexMatcher.GoogleRE2" => &["max_program_size"],
        "envoy.type.matcher.v3.RegexMatchAndSubstitute" => &["pattern", "substitution"],
        "envoy.config.route.v3.RouteAction" => &[
            "cluster",
            "cluster_header",
            "weighted_clusters",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "timeout",
            "idle_timeout",
            "retry_policy",
            "hash_policy",
            "upgrade_configs",
            "request_mirror_policies",
            "cors",
        ],
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy" => &[
            "cluster",
            "runtime_fraction",
            "disable_shadow_host_suffix_append",
        ],
        "envoy.config.route.v3.WeightedCluster" => &["clusters", "total_weight"],
        "envoy.config.route.v3.WeightedCluster.ClusterWeight" => &[
            "name",
            "weight",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
        "envoy.config.route.v3.RouteAction.UpgradeConfig" => {
            &["upgrade_type", "enabled", "connect_config"]
        }
        "envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig" => &[],
        "envoy.config.route.v3.RouteAction.HashPolicy" => &[
            "header",
            "cookie",
            "connection_properties",
            "query_parameter",
            "terminal",
        ],
        "envoy.config.route.v3.RouteAction.HashPolicy.Header" => &["header_name"],
        "envoy.config.route.v3.RouteAction.HashPolicy.Cookie" => &["name", "ttl", "path"],
        "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties" => &["source_ip"],
        "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter" => &["name"],
        "envoy.config.route.v3.RetryPolicy" => &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retriable_status_codes",
            "retry_back_off",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
        ],
        "envoy.config.route.v3.RetryPolicy.RetryBackOff" => &["base_interval", "max_interval"],
        "envoy.config.route.v3.RetryPolicy.RetryHostPredicate" => &["name", "typed_config"],
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" => &[],
        "envoy.config.route.v3.RedirectAction" => &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
        "envoy.config.route.v3.DirectResponseAction" => &["status", "body"],
        "envoy.config.core.v3.HeaderValueOption" => {
            &["header", "append", "append_action", "keep_empty_value"]
        }
        "envoy.config.core.v3.HeaderValue" => &["key", "value", "raw_value"],
        // Clusters.
        "envoy.config.cluster.v3.Cluster" => &[
            "name",
            "alt_stat_name",
            "type",
            "connect_timeout",
            "per_connection_buffer_limit_bytes",
            "lb_policy",
            "load_assignment",
            "max_requests_per_connection",
            "circuit_breakers",
            "common_http_protocol_options",
            "http_protocol_options",
            "http2_protocol_options",
            "typed_extension_protocol_options",
            "dns_refresh_rate",
            "dns_lookup_family",
            "outlier_detection",
            "eds_cluster_config",
            "common_lb_config",
            "transport_socket",
            "round_robin_lb_config",
            "least_request_lb_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "metadata",
            "cluster_type",
        ],
        "envoy.config.cluster.v3.Cluster.CustomClusterType" => &["name", "typed_config"],
        "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig" => &["dns_cache_config"],
        "envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig" => {
            &["name", "dns_lookup_family", "dns_refresh_rate", "max_hosts"]
        }
        "envoy.config.cluster.v3.Cluster.CommonLbConfig" => &["healthy_panic_threshold"],
        "envoy.type.v3.Percent" => &["value"],
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig" => {
            &["choice_count", "slow_start_config"]
        }
        "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig" => &["slow_start_config"],
        "envoy.config.cluster.v3.Cluster.SlowStartConfig" => {
            &["slow_start_window", "aggression", "min_weight_percent"]
        }
        "envoy.config.cluster.v3.Cluster.RingHashLbConfig" => {
            &["minimum_ring_size", "maximum_ring_size", "hash_function"]
        }
        "envoy.config.cluster.v3.Cluster.MaglevLbConfig" => &["table_size"],
        "envoy.config.cluster.v3.CircuitBreakers" => &["thresholds"],
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds" => &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "track_remaining",
        ],
        "envoy.config.cluster.v3.OutlierDetection" => &[
            "consecutive_5xx",
            "consecutive_gateway_failure",
            "enforcing_consecutive_5xx",
            "enforcing_consecutive_gateway_failure",
            "interval",
            "base_ejection_time",
            "max_ejection_time",
            "max_ejection_percent",
            "split_external_local_origin_errors",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_local_origin_success_rate",
            "enforcing_success_rate",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "failure_percentage_threshold",
            "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "always_eject_one_host",
        ],
        "envoy.config.core.v3.HttpProtocolOptions" => &[
            "idle_timeout",
            "max_requests_per_connection",
            "max_connection_duration",
        ],
        "envoy.config.core.v3.Http1ProtocolOptions" => &[],
        "envoy.config.core.v3.Http2ProtocolOptions" => &["max_concurrent_streams"],
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => &[
            "common_http_protocol_options",
            "explicit_http_config",
            "use_downstream_protocol_config",
        ],
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig" => {
            &["http_protocol_options", "http2_protocol_options"]
        }
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig" => {
            &["http_protocol_options", "http2_protocol_options"]
        }
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" => &[],
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => &["cluster_name", "endpoints"],
        "envoy.config.endpoint.v3.LocalityLbEndpoints" => &[
            "locality",
            "lb_endpoints",
            "load_balancing_weight",
            "priority",
        ],
        "envoy.config.endpoint.v3.LbEndpoint" => &[
            "endpoint",
            "health_status",
            "load_balancing_weight",
            "metadata",
        ],
        "envoy.config.endpoint.v3.Endpoint" => &["address", "hostname"],
        // Free-form values carried along (metadata) are not behaviour.
        "envoy.config.core.v3.Metadata" => return true,
        _ => return false,
    };
    fields.contains(&field)
}
