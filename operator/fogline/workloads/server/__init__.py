"""The edge inference server: an ONNX artifact behind the Open Inference Protocol v2 (REST).
Rooms: wire (HTTP/1.1), rest (endpoints, error mapping), dataplane (decode, route, encode),
model (verify, load, predict), batching (runs off the event loop), metrics (Prometheus)."""
