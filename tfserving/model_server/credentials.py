"""gRPC server credentials as TF Serving builds them (server.cc: BuildServerCredentials):
Google ALTS, TLS from a text SSLConfig file, or none."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format


def _ssl_config_class():
    """tensorflow.serving.SSLConfig (config/ssl_config.proto), which the tensorflow-serving-api
    wheel does not ship: its four fields, declared here."""
    file = descriptor_pb2.FileDescriptorProto(name="model_server/ssl_config.proto", package="tensorflow.serving",
                                              syntax="proto3")
    message = file.message_type.add(name="SSLConfig")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, kind in ((1, "server_key", field.TYPE_STRING), (2, "server_cert", field.TYPE_STRING),
                               (3, "custom_ca", field.TYPE_STRING), (4, "client_verify", field.TYPE_BOOL)):
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


SSLConfig = _ssl_config_class()


def read_ssl_config(path: Path):
    config = SSLConfig()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), config)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise ValueError(f"Error parsing text-format tensorflow.serving.SSLConfig: {error}") from None
    if not config.server_key or not config.server_cert:
        raise ValueError(f"{path}: an SSLConfig needs server_key and server_cert")
    return config


def server_credentials(use_alts: bool, ssl_config_file: str) -> grpc.ServerCredentials | None:
    """None: an insecure port."""
    if use_alts:
        return grpc.alts_server_credentials()
    if not ssl_config_file:
        return None
    config = read_ssl_config(Path(ssl_config_file))
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify,
    )
