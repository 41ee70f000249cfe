"""The Open Inference Protocol (KServe v2) on the wire, shared by every side that speaks it.

codec.py          JSON and binary tensors (REST) and ModelInfer messages (gRPC), checked
client.py         URLs, error mapping and gRPC helpers for RemoteRunner and RemoteTarget
inference.proto   the gRPC API; gen_proto.py regenerates _proto/ from it

Used by lab.runners.remote, lab.bench.remote_target and lab.serve; imports none of them.
"""
