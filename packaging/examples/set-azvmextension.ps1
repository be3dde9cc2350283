# Deploy the InfiniBandDriverLinux extension with Az PowerShell (Az.Compute).
# Examples to copy from, not a script to run as is: set the variables first.
# Public settings are described in manifest/settings.schema.json and the README's settings table.

$ResourceGroup = "hpc-rg"
$Location      = "eastus"
$VmName        = "hpc-node-0"
$VmssName      = "hpc-vmss"

# 1. One VM, catalog defaults: the driver stack is chosen by NIC generation, distribution and kernel.
Set-AzVMExtension -ResourceGroupName $ResourceGroup -VMName $VmName -Location $Location `
  -Publisher "OpenSource.HpcCompute" -ExtensionType "InfiniBandDriverLinux" -Name "InfiniBandDriverLinux" `
  -TypeHandlerVersion "1.0" `
  -Settings @{ stack = "auto"; ipoib = "auto" }

# 2. One VM, DOCA-OFED pinned to a catalog version, settings given as a JSON string.
Set-AzVMExtension -ResourceGroupName $ResourceGroup -VMName $VmName -Location $Location `
  -Publisher "OpenSource.HpcCompute" -ExtensionType "InfiniBandDriverLinux" -Name "InfiniBandDriverLinux" `
  -TypeHandlerVersion "1.0" `
  -SettingString '{"stack":"doca","version":"3.2.1","ipoib":"auto"}'

# 3. One VM behind an authenticating proxy: the proxy URL (with its credentials) is a protected
#    setting, read from Key Vault at deployment time, so it never appears in this file or in the
#    VM's public configuration.
$Protected = @{ proxy = (Get-AzKeyVaultSecret -VaultName "hpc-kv" -Name "ibdriver-proxy" -AsPlainText) }
Set-AzVMExtension -ResourceGroupName $ResourceGroup -VMName $VmName -Location $Location `
  -Publisher "OpenSource.HpcCompute" -ExtensionType "InfiniBandDriverLinux" -Name "InfiniBandDriverLinux" `
  -TypeHandlerVersion "1.0" `
  -Settings @{ stack = "auto"; ipoib = "native"; reboot = "ifRequired"; lockTimeoutSeconds = 1800 } `
  -ProtectedSettings $Protected

# 4. A scale set: add the extension to the model, push the model, then roll it out to existing
#    instances (needed when the upgrade policy is Manual).
$Vmss = Get-AzVmss -ResourceGroupName $ResourceGroup -VMScaleSetName $VmssName
$Vmss = Add-AzVmssExtension -VirtualMachineScaleSet $Vmss -Name "InfiniBandDriverLinux" `
  -Publisher "OpenSource.HpcCompute" -Type "InfiniBandDriverLinux" `
  -TypeHandlerVersion "1.0" -AutoUpgradeMinorVersion $true `
  -Setting @{ stack = "auto"; ipoib = "auto"; hcaNaming = "stable" }
Update-AzVmss -ResourceGroupName $ResourceGroup -VMScaleSetName $VmssName -VirtualMachineScaleSet $Vmss
Update-AzVmssInstance -ResourceGroupName $ResourceGroup -VMScaleSetName $VmssName -InstanceId "*"
