/*
 * Beam's Java expansion service on one host address: `BoundExpansionService <host> <port>
 * [pipeline options...]`. Beam 2.70's ExpansionService.main takes only a port and listens on
 * every interface (ServerBuilder.forPort); this entry point serves the same services (the
 * expansion service and artifact retrieval) on <host>:<port>. runners/stack/flink.py starts it
 * as `kafka-expansion`; see docs/local-stack.md ("Listening addresses").
 */
package dcmms;

import java.net.InetSocketAddress;
import java.util.Arrays;
import org.apache.beam.runners.fnexecution.artifact.ArtifactRetrievalService;
import org.apache.beam.sdk.expansion.service.ExpansionService;
import org.apache.beam.sdk.expansion.service.ExpansionServiceOptions;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Server;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.netty.NettyServerBuilder;

public final class BoundExpansionService {
  private BoundExpansionService() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: BoundExpansionService <host> <port> [pipeline options...]");
      System.exit(2);
    }
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    PipelineOptionsFactory.register(ExpansionServiceOptions.class);
    PipelineOptions options =
        PipelineOptionsFactory.fromArgs(Arrays.copyOfRange(args, 2, args.length)).create();
    ExpansionService service = new ExpansionService(options, host + ":" + port);
    Server server = NettyServerBuilder.forAddress(new InetSocketAddress(host, port))
        .addService(service)
        .addService(new ArtifactRetrievalService())
        .build()
        .start();
    System.out.println("Expansion service listening on " + host + ":" + server.getPort());
    Runtime.getRuntime().addShutdownHook(new Thread(server::shutdown));
    server.awaitTermination();
  }
}
