//! Session stores for the web frameworks over the cluster ([`crate::ClusterClient`]).
