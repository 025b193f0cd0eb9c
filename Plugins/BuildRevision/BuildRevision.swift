import Foundation
import PackagePlugin

/// Generates `BuildRevision.swift` with the git commit the package is built from (`BuildInfo.revision`).
///
/// A build command whose inputs are git's HEAD and its reflog, so it runs again after every commit,
/// checkout or reset, and not otherwise. Uncommitted edits are not marked. Without git or a `.git`
/// directory (a source tarball) the revision is `unknown`.
@main struct BuildRevision: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        let package = context.package.directoryURL
        let file = context.pluginWorkDirectoryURL.appending(path: "BuildRevision.swift")
        let inputs = [".git/HEAD", ".git/logs/HEAD"].map { package.appending(path: $0) }
            .filter { FileManager.default.fileExists(atPath: $0.path()) }
        let script = """
            revision=$(git -C "$1" rev-parse --short=12 HEAD 2>/dev/null) || revision=unknown
            printf 'extension BuildInfo {\\n    /// The git commit this binary was built from.\\n    public static let revision = "%s"\\n}\\n' "$revision" > "$2"
            """
        return [
            .buildCommand(
                displayName: "Recording the git revision",
                executable: URL(filePath: "/bin/sh"),
                arguments: ["-c", script, "sh", package.path(), file.path()],
                inputFiles: inputs,
                outputFiles: [file])
        ]
    }
}
