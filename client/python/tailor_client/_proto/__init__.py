"""Generated gRPC stubs of proto/tailor/v1/fusion_service.proto.

setup.py writes fusion_service_pb2.py and fusion_service_pb2_grpc.py here
at build time (the descriptor keeps its name, tailor/v1/fusion_service.proto).
Use them through tailor_client.pb and tailor_client.pb_grpc.
"""
