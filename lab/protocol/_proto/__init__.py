"""Generated from lab/protocol/inference.proto by lab.protocol.gen_proto."""
