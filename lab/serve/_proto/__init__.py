"""Generated from lab/serve/inference.proto by lab.serve.gen_proto."""
