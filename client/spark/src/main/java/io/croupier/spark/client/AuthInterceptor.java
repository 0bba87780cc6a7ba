package io.croupier.spark.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;

/**
 * Adds the server's auth token ({@code authorization: Bearer <token>}) and the app's secret on that server
 * ({@code x-croupier-app-secret}) to every call made through a stub.
 */
public final class AuthInterceptor implements ClientInterceptor {
  public static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  public static final Metadata.Key<String> APP_SECRET =
      Metadata.Key.of("x-croupier-app-secret", Metadata.ASCII_STRING_MARSHALLER);

  private final String bearer;
  private final String appSecret;

  /** {@code bearer}: the whole {@code Bearer <token>} value, or null; {@code appSecret}: or null. */
  public AuthInterceptor(String bearer, String appSecret) {
    this.bearer = bearer;
    this.appSecret = appSecret == null || appSecret.isEmpty() ? null : appSecret;
  }

  /** The interceptor of a call naming an app whose secret on that server is {@code appSecret}; null if none is needed. */
  public static AuthInterceptor of(CroupierSecurity security, String appSecret) {
    String bearer = security.bearer();
    if (bearer == null && (appSecret == null || appSecret.isEmpty())) {
      return null;
    }
    return new AuthInterceptor(bearer, appSecret);
  }

  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(MethodDescriptor<ReqT, RespT> method,
      CallOptions callOptions, Channel next) {
    return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, callOptions)) {
      @Override
      public void start(Listener<RespT> listener, Metadata headers) {
        if (bearer != null) {
          headers.discardAll(AUTHORIZATION);
          headers.put(AUTHORIZATION, bearer);
        }
        if (appSecret != null) {
          headers.discardAll(APP_SECRET);
          headers.put(APP_SECRET, appSecret);
        }
        super.start(listener, headers);
      }
    };
  }

  @Override
  public String toString() {
    return "AuthInterceptor(token=" + (bearer != null) + ", appSecret=" + (appSecret != null) + ")";
  }
}
