import ArgumentParser
import Foundation
import Logging
import OutboxCLI
import OutboxCore

extension OutboxRelayCommand {
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the backlog, oldest pending event and dead letters per destination.")

        @OptionGroup var options: GlobalOptions

        @Flag(name: .long, help: "Print JSON instead of a table.")
        var json = false

        func run() async throws {
            let logger = CommandSupport.bootstrapLogging(label: "outbox-relay.status")
            let config = await CommandSupport.loadConfiguration(path: options.config)
            let db = await CommandSupport.connect(config, name: "outbox-relay-cli", logger: logger)
            let stats = try await BacklogStats.read(db)
            let relays = try await db.query(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'outbox-relay'"
            ).first!.decode("n", as: Int.self)
            let destinations: [OutboxEvent.Destination] = [.qdrant, .redis]
            if json {
                var body: [String: JSONValue] = ["relay_connections": .number(Double(relays))]
                for d in destinations {
                    let f = stats.destinations[d]
                    body[d.rawValue] = [
                        "pending": .number(Double(f?.pending ?? 0)), "available": .number(Double(f?.available ?? 0)),
                        "oldest_pending_seconds": .number(f?.oldestPendingSeconds ?? 0),
                        "dead_letters": .number(Double(f?.deadLetters ?? 0)),
                    ]
                }
                print(JSONValue.object(body).jsonText)
                return
            }
            print("destination   pending  available  oldest pending  dead letters")
            for d in destinations {
                let f = stats.destinations[d]
                print(
                    d.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)
                        + String(format: "%9d  %9d  %12.1f s  %12d", f?.pending ?? 0, f?.available ?? 0, f?.oldestPendingSeconds ?? 0,
                                 f?.deadLetters ?? 0))
            }
            print("relay worker connections: \(relays)")
        }
    }

    struct DeadLettersCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dead-letters",
            abstract: "List, requeue or purge dead-lettered events.",
            subcommands: [List.self, Requeue.self, Purge.self])

        struct Selection: ParsableArguments {
            @Option(name: .long, parsing: .upToNextOption, help: "Event ids.")
            var id: [Int64] = []

            @Option(name: .long, help: "Every dead letter of this ordering key.")
            var key: String?

            @Flag(name: .long, help: "Every dead letter.")
            var all = false

            @Option(name: .long, help: "Only this destination (qdrant or redis), with --key or --all.")
            var destination: String?

            func validate() throws {
                let chosen = (id.isEmpty ? 0 : 1) + (key == nil ? 0 : 1) + (all ? 1 : 0)
                guard chosen == 1 else { throw ValidationError("choose exactly one of --id, --key or --all") }
                if let destination, OutboxEvent.Destination(rawValue: destination) == nil {
                    throw ValidationError("--destination must be qdrant or redis, got \"\(destination)\"")
                }
            }

            var value: DeadLetters.Selection {
                let d = destination.flatMap(OutboxEvent.Destination.init(rawValue:))
                if !id.isEmpty { return .ids(id) }
                if let key { return .key(key, destination: d) }
                return .all(destination: d)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List dead letters, oldest first (all by default).")
            @OptionGroup var options: GlobalOptions
            @Option(name: .long, help: "Only this ordering key.") var key: String?
            @Option(name: .long, help: "At most this many.") var limit = 100
            @Flag(name: .long, help: "Print JSON lines, payload included.") var json = false

            func run() async throws {
                let logger = CommandSupport.bootstrapLogging(label: "outbox-relay.dead-letters")
                let config = await CommandSupport.loadConfiguration(path: options.config)
                let db = await CommandSupport.connect(config, name: "outbox-relay-cli", logger: logger)
                let entries = try await DeadLetters.list(
                    db, selection: key.map { .key($0, destination: nil) } ?? .all(destination: nil), limit: limit)
                let formatter = ISO8601DateFormatter()
                for e in entries {
                    if json {
                        let line: JSONValue = [
                            "id": .number(Double(e.id)), "destination": .string(e.destination), "operation": .string(e.operation),
                            "key": .string(e.key), "attempts": .number(Double(e.attempts)), "error": .string(e.error),
                            "created_at": .string(formatter.string(from: e.createdAt)),
                            "dead_lettered_at": .string(formatter.string(from: e.deadLetteredAt)),
                            "payload": (try? JSONValue.parse(e.payload)) ?? .null,
                        ]
                        print(line.jsonText)
                    } else {
                        print("\(e.id)  \(e.destination).\(e.operation)  key=\(e.key)  attempts=\(e.attempts)  \(formatter.string(from: e.deadLetteredAt))\n    \(e.error)")
                    }
                }
                if !json { print("\(entries.count) dead letter(s)") }
            }
        }

        struct Requeue: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Move dead letters back to the outbox (original ids, attempts reset) and wake the relays.")
            @OptionGroup var options: GlobalOptions
            @OptionGroup var selection: Selection

            func run() async throws {
                let logger = CommandSupport.bootstrapLogging(label: "outbox-relay.dead-letters")
                let config = await CommandSupport.loadConfiguration(path: options.config)
                let db = await CommandSupport.connect(config, name: "outbox-relay-cli", logger: logger)
                let requeued = try await DeadLetters.requeue(db, selection: selection.value)
                print("requeued \(requeued) event(s)")
                CommandSupport.failIfNoneMatched(requeued, selection.value)
            }
        }

        struct Purge: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete dead letters for good.")
            @OptionGroup var options: GlobalOptions
            @OptionGroup var selection: Selection

            func run() async throws {
                let logger = CommandSupport.bootstrapLogging(label: "outbox-relay.dead-letters")
                let config = await CommandSupport.loadConfiguration(path: options.config)
                let db = await CommandSupport.connect(config, name: "outbox-relay-cli", logger: logger)
                let purged = try await DeadLetters.purge(db, selection: selection.value)
                print("purged \(purged) dead letter(s)")
                CommandSupport.failIfNoneMatched(purged, selection.value)
            }
        }
    }
}
