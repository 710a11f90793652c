// go-peer plays the cf CLI for the plugin's tests: it serves CliRpcCmd over Go's own net/rpc
// and encoding/gob (standard library only, same method signatures as the cf CLI), then runs
// the plugin binary as cf does: `<plugin> <port> <args...>`. Its exit code is cf's: 0 when
// the plugin exited 0, 1 otherwise.
//
// Configuration comes from the environment (PEER_TOKEN, PEER_API, PEER_ORG_GUID, PEER_ORG,
// PEER_SPACE_GUID, PEER_SPACE, PEER_USER, PEER_SSL_DISABLED); PEER_METADATA_OUT names a file
// that receives the metadata of SetPluginMetadata as JSON.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/rpc"
	"os"
	"os/exec"
	"strconv"
)

type VersionType struct {
	Major int
	Minor int
	Build int
}

type Usage struct {
	Usage   string
	Options map[string]string
}

type Command struct {
	Name         string
	Alias        string
	HelpText     string
	UsageDetails Usage
}

type PluginMetadata struct {
	Name           string
	Version        VersionType
	LibraryVersion VersionType
	MinCliVersion  VersionType
	Commands       []Command
}

type QuotaFields struct {
	Guid                    string
	Name                    string
	MemoryLimit             int64
	InstanceMemoryLimit     int64
	RoutesLimit             int
	ServicesLimit           int
	NonBasicServicesAllowed bool
}

type OrganizationFields struct {
	Guid            string
	Name            string
	QuotaDefinition QuotaFields
}

type Organization struct {
	OrganizationFields
}

type SpaceFields struct {
	Guid string
	Name string
}

type Space struct {
	SpaceFields
}

type CliRpcCmd struct{}

func (c *CliRpcCmd) IsMinCliVersion(version string, retVal *bool) error {
	*retVal = version <= "8.9.1"
	return nil
}

func (c *CliRpcCmd) SetPluginMetadata(m PluginMetadata, retVal *bool) error {
	if out := os.Getenv("PEER_METADATA_OUT"); out != "" {
		b, _ := json.Marshal(m)
		if err := os.WriteFile(out, b, 0o644); err != nil {
			return err
		}
	}
	*retVal = true
	return nil
}

func (c *CliRpcCmd) AccessToken(_ string, retVal *string) error {
	*retVal = "bearer " + os.Getenv("PEER_TOKEN")
	return nil
}

func (c *CliRpcCmd) ApiEndpoint(_ string, retVal *string) error {
	*retVal = os.Getenv("PEER_API")
	return nil
}

func (c *CliRpcCmd) IsSSLDisabled(_ string, retVal *bool) error {
	*retVal = os.Getenv("PEER_SSL_DISABLED") == "true"
	return nil
}

func (c *CliRpcCmd) IsLoggedIn(_ string, retVal *bool) error {
	*retVal = os.Getenv("PEER_TOKEN") != ""
	return nil
}

func (c *CliRpcCmd) Username(_ string, retVal *string) error {
	*retVal = os.Getenv("PEER_USER")
	return nil
}

func (c *CliRpcCmd) HasOrganization(_ string, retVal *bool) error {
	*retVal = os.Getenv("PEER_ORG") != ""
	return nil
}

func (c *CliRpcCmd) HasSpace(_ string, retVal *bool) error {
	*retVal = os.Getenv("PEER_SPACE") != ""
	return nil
}

func (c *CliRpcCmd) GetCurrentOrg(_ string, retVal *Organization) error {
	retVal.Guid = os.Getenv("PEER_ORG_GUID")
	retVal.Name = os.Getenv("PEER_ORG")
	return nil
}

func (c *CliRpcCmd) GetCurrentSpace(_ string, retVal *Space) error {
	retVal.Guid = os.Getenv("PEER_SPACE_GUID")
	retVal.Name = os.Getenv("PEER_SPACE")
	return nil
}

func (c *CliRpcCmd) GetOutputAndReset(_ bool, retVal *[]string) error {
	*retVal = []string{"line one", "", "line three"}
	return nil
}

func (c *CliRpcCmd) Fail(_ string, retVal *string) error {
	return fmt.Errorf("boom")
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go-peer PLUGIN [ARGS...]")
		os.Exit(2)
	}
	server := rpc.NewServer()
	if err := server.Register(&CliRpcCmd{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go server.ServeConn(conn)
		}
	}()
	port := strconv.Itoa(listener.Addr().(*net.TCPAddr).Port)
	cmd := exec.Command(os.Args[1], append([]string{port}, os.Args[2:]...)...)
	cmd.Stdin = os.Stdin
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		os.Exit(1)
	}
}
