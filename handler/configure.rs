//! The configure stage: RDMA modules, stack services, IPoIB, HCA names (being built).
