/*
 * dCMMS replacement for Beam 2.70's org.apache.beam.sdk.fn.server.ServerFactory, put ahead of
 * the Beam jars on the job server's classpath (runners/stack/jvm_patches.py).
 *
 * Why: Beam's version builds every TCP server with NettyServerBuilder.forPort(port), which
 * binds the wildcard address and drops the host it was given. Through it the job API
 * (--job-host is only used for the URL), the artifact service and the Fn API servers of
 * every job (control, data, state, logging, provisioning) listened on all interfaces,
 * unauthenticated. This class keeps the public API and binds the socket address itself:
 * the configured host for the job and artifact services, the loopback address for the
 * servers Beam allocates. See docs/local-stack.md ("Listening addresses").
 */
package org.apache.beam.sdk.fn.server;

import java.io.File;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import org.apache.beam.model.pipeline.v1.Endpoints;
import org.apache.beam.sdk.fn.channel.SocketAddressFactory;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.BindableService;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Server;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ServerInterceptors;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.netty.NettyServerBuilder;
import org.apache.beam.vendor.grpc.v1p69p0.io.netty.channel.epoll.EpollEventLoopGroup;
import org.apache.beam.vendor.grpc.v1p69p0.io.netty.channel.epoll.EpollServerDomainSocketChannel;
import org.apache.beam.vendor.grpc.v1p69p0.io.netty.channel.epoll.EpollServerSocketChannel;
import org.apache.beam.vendor.grpc.v1p69p0.io.netty.channel.unix.DomainSocketAddress;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.net.HostAndPort;

/** A gRPC server factory whose servers listen on the address they are given. */
public abstract class ServerFactory {
  private static final int KEEP_ALIVE_SECONDS = 20;

  public static ServerFactory createDefault() {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), () -> 0);
  }

  public static ServerFactory createWithUrlFactory(UrlFactory urlFactory) {
    return new InetSocketAddressServerFactory(urlFactory, () -> 0);
  }

  public static ServerFactory createWithPortSupplier(Supplier<Integer> portSupplier) {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), portSupplier);
  }

  public static ServerFactory createWithUrlFactoryAndPortSupplier(
      UrlFactory urlFactory, Supplier<Integer> portSupplier) {
    return new InetSocketAddressServerFactory(urlFactory, portSupplier);
  }

  public static ServerFactory createEpollSocket() {
    return new EpollSocket();
  }

  public static ServerFactory createEpollDomainSocket() {
    return new EpollDomainSocket();
  }

  /** A server on a free address; its URL is written into {@code builder}. */
  public abstract Server allocateAddressAndCreate(
      List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder builder)
      throws IOException;

  /** A server at the address of {@code serviceDescriptor}. */
  public abstract Server create(
      List<BindableService> services, Endpoints.ApiServiceDescriptor serviceDescriptor)
      throws IOException;

  static Server start(NettyServerBuilder builder, List<BindableService> services)
      throws IOException {
    builder.maxInboundMessageSize(Integer.MAX_VALUE)
        .permitKeepAliveTime(KEEP_ALIVE_SECONDS, TimeUnit.SECONDS);
    for (BindableService service : services) {
      builder.addService(
          ServerInterceptors.intercept(service, GrpcContextHeaderAccessorProvider.interceptor()));
    }
    return builder.build().start();
  }

  static InetSocketAddress inetAddress(String url, String kind) {
    SocketAddress address = SocketAddressFactory.createFrom(url);
    if (!(address instanceof InetSocketAddress)) {
      throw new IllegalArgumentException(kind + " needs a host:port address, got " + url);
    }
    return (InetSocketAddress) address;
  }

  /** TCP servers bound to the given host (the loopback address when Beam picks the address). */
  public static class InetSocketAddressServerFactory extends ServerFactory {
    private final UrlFactory urlFactory;
    private final Supplier<Integer> portSupplier;

    private InetSocketAddressServerFactory(UrlFactory urlFactory, Supplier<Integer> portSupplier) {
      this.urlFactory = urlFactory;
      this.portSupplier = portSupplier;
    }

    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder builder)
        throws IOException {
      InetSocketAddress address =
          new InetSocketAddress(InetAddress.getLoopbackAddress(), portSupplier.get());
      Server server = start(NettyServerBuilder.forAddress(address), services);
      builder.setUrl(urlFactory.createUrl(address.getHostName(), server.getPort()));
      return server;
    }

    @Override
    public Server create(
        List<BindableService> services, Endpoints.ApiServiceDescriptor serviceDescriptor)
        throws IOException {
      InetSocketAddress address = inetAddress(serviceDescriptor.getUrl(), "a TCP gRPC server");
      return start(NettyServerBuilder.forAddress(address), services);
    }
  }

  /** TCP servers on Netty's epoll transport, bound like {@link InetSocketAddressServerFactory}. */
  private static class EpollSocket extends ServerFactory {
    private static NettyServerBuilder builder(InetSocketAddress address) {
      return NettyServerBuilder.forAddress(address)
          .channelType(EpollServerSocketChannel.class)
          .workerEventLoopGroup(new EpollEventLoopGroup())
          .bossEventLoopGroup(new EpollEventLoopGroup());
    }

    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder builder)
        throws IOException {
      InetSocketAddress address = new InetSocketAddress(InetAddress.getLoopbackAddress(), 0);
      Server server = start(builder(address), services);
      builder.setUrl(HostAndPort.fromParts(address.getHostName(), server.getPort()).toString());
      return server;
    }

    @Override
    public Server create(
        List<BindableService> services, Endpoints.ApiServiceDescriptor serviceDescriptor)
        throws IOException {
      return start(builder(inetAddress(serviceDescriptor.getUrl(), "an epoll gRPC server")),
          services);
    }
  }

  /** Servers on a Unix domain socket in java.io.tmpdir (no network exposure). */
  private static class EpollDomainSocket extends ServerFactory {
    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder builder)
        throws IOException {
      File socket;
      do {
        socket = new File(System.getProperty("java.io.tmpdir"),
            "fnapi" + ThreadLocalRandom.current().nextInt(10000) + ".sock");
      } while (socket.exists());
      builder.setUrl("unix://" + socket.getAbsolutePath());
      return create(services, builder.build());
    }

    @Override
    public Server create(
        List<BindableService> services, Endpoints.ApiServiceDescriptor serviceDescriptor)
        throws IOException {
      SocketAddress address = SocketAddressFactory.createFrom(serviceDescriptor.getUrl());
      if (!(address instanceof DomainSocketAddress)) {
        throw new IllegalArgumentException(
            "a domain-socket gRPC server needs a unix:// address, got "
                + serviceDescriptor.getUrl());
      }
      return start(NettyServerBuilder.forAddress(address)
          .channelType(EpollServerDomainSocketChannel.class)
          .workerEventLoopGroup(new EpollEventLoopGroup())
          .bossEventLoopGroup(new EpollEventLoopGroup()), services);
    }
  }

  /** Builds the URL clients are given for a server's host and port. */
  @FunctionalInterface
  public interface UrlFactory {
    String createUrl(String address, int port);

    static UrlFactory createDefault() {
      return (host, port) -> HostAndPort.fromParts(host, port).toString();
    }
  }
}
