import ArgumentParser
import Foundation
import Logging
import OutboxCore

@main
struct ReconcilerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-reconciler",
        abstract: "Proves Postgres, Qdrant and Redis agree, and repairs drift.",
        discussion: """
            Configuration: config/outbox.yaml (see docs/CONFIGURATION.md), with OUTBOX_* environment overrides \
            such as OUTBOX_POSTGRES_URL.

            Exit status: 0 success, 2 bad configuration or unreachable service.
            """,
        subcommands: [Check.self]
    )
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Configuration file.", valueName: "path"))
    var config: String?
}

extension ReconcilerCommand {
    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the configuration and that Postgres, Redis and Qdrant answer.",
            discussion: "Prints one line per store. Exit 0 when all answer, 2 otherwise.")

        @OptionGroup var options: GlobalOptions

        func run() async throws {
            let logger = CommandSupport.bootstrapLogging(label: "outbox-reconciler.check")
            let config = await CommandSupport.loadConfiguration(path: options.config)
            await CommandSupport.runCheck(config, logger: logger)
        }
    }
}
