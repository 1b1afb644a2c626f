"""dae serve: a drop-in for tensorflow_model_server (servables, manager, batching, REST, gRPC)."""
