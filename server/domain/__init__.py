"""Use cases and rules; owns transactions; imports no grpc and no *_pb2."""
