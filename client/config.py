"""Cluster addresses for the client side: re-exported from `kvstore.config`,
which both the client and the replica server use (replica/ never imports
client/, so the shared parsing lives in kvstore/)."""

from kvstore.config import (  # noqa: F401
    DEFAULT_CLUSTER,
    ENV_CLUSTER,
    ConfigError,
    ReplicaAddress,
    display_address,
    dump_cluster_config,
    load_cluster_config,
    local_cluster_config,
    normalize_address,
    parse_cluster_addresses,
    write_cluster_config,
)
