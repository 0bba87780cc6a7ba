package io.croupier.spark.client;

import io.grpc.netty.GrpcHttp2ConnectionHandler;
import io.grpc.netty.InternalProtocolNegotiator;
import io.netty.channel.ChannelHandler;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.handler.codec.http2.Http2Settings;
import io.netty.util.AsciiString;
import java.util.concurrent.TimeUnit;

/**
 * A plaintext protocol negotiator that lets the server send HTTP/2 DATA frames of up to {@code maxFrameBytes}
 * instead of 16 KiB. grpc-java has no setting for SETTINGS_MAX_FRAME_SIZE, and a server must not send a frame
 * larger than the client advertised: with 16 KiB frames the server writes every 16 KiB of a fetch with its
 * own system call (measured: 30 % more server CPU per fetched GiB, docs/PERFORMANCE.md round 6).
 *
 * <p>How: once grpc-netty's HTTP/2 handler has sent its connection preface, a second SETTINGS frame with
 * MAX_FRAME_SIZE is written through that handler's encoder (Netty's public API). Netty queues it as sent
 * local settings and applies it to its own frame reader when the server acknowledges it; the server
 * acknowledges before it sends any larger frame, so the reader accepts them. Nothing else changes.
 */
final class FrameSizeNegotiator implements InternalProtocolNegotiator.ProtocolNegotiator {
  /** How often, at most, the handler looks for grpc-netty's handler in the pipeline (every 5 ms). */
  private static final int FIND_ATTEMPTS_MAX = 200;

  private final InternalProtocolNegotiator.ProtocolNegotiator delegate;
  private final int maxFrameBytes;

  FrameSizeNegotiator(InternalProtocolNegotiator.ProtocolNegotiator delegate, int maxFrameBytes) {
    this.delegate = delegate;
    this.maxFrameBytes = maxFrameBytes;
  }

  @Override
  public AsciiString scheme() {
    return delegate.scheme();
  }

  @Override
  public ChannelHandler newHandler(GrpcHttp2ConnectionHandler grpcHandler) {
    ChannelHandler inner = delegate.newHandler(grpcHandler);
    return new ChannelInboundHandlerAdapter() {
      @Override
      public void handlerAdded(ChannelHandlerContext ctx) {
        ctx.pipeline().addAfter(ctx.name(), null, inner);
      }

      @Override
      public void channelActive(ChannelHandlerContext ctx) throws Exception {
        super.channelActive(ctx);
        ctx.executor().execute(() -> sendSettings(ctx, grpcHandler, 0));
      }
    };
  }

  private void sendSettings(ChannelHandlerContext ctx, GrpcHttp2ConnectionHandler grpcHandler, int attempt) {
    if (!ctx.channel().isActive()) {
      return;
    }
    ChannelHandlerContext grpcCtx = ctx.pipeline().context(grpcHandler);
    if (grpcCtx == null) {
      if (attempt < FIND_ATTEMPTS_MAX) {
        ctx.executor().schedule(() -> sendSettings(ctx, grpcHandler, attempt + 1), 5, TimeUnit.MILLISECONDS);
      }
      return; // never found: the connection keeps 16 KiB frames, which is correct too
    }
    grpcHandler.encoder().writeSettings(grpcCtx, new Http2Settings().maxFrameSize(maxFrameBytes),
        grpcCtx.newPromise());
    grpcCtx.flush();
    if (ctx.pipeline().context(ctx.handler()) != null) {
      ctx.pipeline().remove(ctx.handler());
    }
  }

  @Override
  public void close() {
    delegate.close();
  }
}
